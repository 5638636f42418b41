"""``python -m dpo_edu``: the ``dpo-edu`` command, where its script is not on the PATH."""

from .cli import main

main()
