"""``python -m graft_select``: the ``graft-select`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
