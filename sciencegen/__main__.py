"""``python -m sciencegen``: the whole pipeline (same as the ``sciencegen`` command)."""

from .cli import main

main()
