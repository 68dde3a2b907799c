"""``python -m sim``: see ``sim.cli``."""

from sim.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
