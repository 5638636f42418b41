"""dpo_edu: the library behind the course notebooks.

Rooms (import the one you need; nothing here loads a model or data at import time):

- ``toy``: finite prompts × responses — exact optimal policy, KL, expected reward.
- ``bradley_terry``: sampling preferences from a reward and fitting one back.
- ``losses``: DPO, cDPO, IPO and hinge losses with TRL-named metrics; the Bradley–Terry loss.
- ``tabular``: softmax policies on toy problems trained by gradient ascent or by DPO.
- ``plots`` / ``widgets``: figures and the sliders that drive them.
- ``record``: values a notebook publishes for its tests.
- ``presets``: the ``ci`` / ``cpu`` / ``gpt2`` sizes and the ``auto`` choice.
"""

__version__ = "0.1.0"
