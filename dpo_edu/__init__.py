"""dpo_edu: the library behind the course notebooks.

Import the room you need; nothing here loads a model or data at import time.
- Theory on finite problems (notebooks 01–03): ``toy``, ``bradley_terry``, ``losses``, ``tabular``.
- Language models (notebooks 04–05): ``presets``, ``data``, ``models``, ``sampling``,
  ``sentiment``, ``training`` and its trainers ``sft``, ``reward_model``, ``dpo``, ``ppo``;
  ``preferences``, ``evaluate``, ``cost``; ``stages`` and ``pipeline`` (the run folder).
- Notebook helpers: ``plots``, ``widgets``, ``live``, ``record``, ``source``, ``cli`` (the
  ``dpo-edu`` command), ``assignments`` (``dpo-edu student``).

The README's library table says what each room holds.
"""

__version__ = "0.1.0"
