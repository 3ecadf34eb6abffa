"""``python -m icm_lib``: see :mod:`icm_lib.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
