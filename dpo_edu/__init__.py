"""dpo_edu: the library behind the course notebooks.

Rooms (import the one you need; nothing here loads a model or data at import time):

Theory on finite problems (notebooks 01–03)
- ``toy``: prompts × responses — exact optimal policy, KL, expected reward, implicit reward.
- ``bradley_terry``: sampling preferences from a reward and fitting one back.
- ``losses``: DPO, cDPO, IPO and hinge losses with TRL-named metrics; the Bradley–Terry loss; PPO's clipped losses.
- ``tabular``: softmax policies trained by gradient ascent on the RLHF objective or by DPO.

Language models (notebooks 04–05)
- ``presets``: the ``ci`` / ``cpu`` / ``gpt2`` sizes and the ``auto`` choice.
- ``data``: IMDb reviews, prompts, preference records, JSONL and ``datasets`` round trips.
- ``models``: tokenizer, tiny GPT-2 or Hub GPT-2, sequence log-probs, batched sampling.
- ``sentiment``: the ground-truth reward p(positive | text).
- ``training``: the loop every trainer shares; ``sft``, ``reward_model``, ``dpo``, ``ppo``: the trainers.
- ``preferences``: sampled completions → labelled pairs; ``evaluate``: reward and KL of samples.
- ``pipeline``: the run folder, each stage loaded when present and built when not.

Notebook helpers
- ``plots`` / ``widgets`` / ``live``: figures, the sliders that drive them, live training curves.
- ``record``: values a notebook publishes for its tests; ``cli``: the ``dpo-edu`` command.
- ``assignments``: the otter-grader masters in ``assignments/`` → student notebooks and autograders
  (``dpo-edu student``).
"""

__version__ = "0.1.0"
