"""``python -m icm_lib.bench ...``: the benchmarks under their first name; they live in
:mod:`icm_lib.dev.bench` with the other developer tools (``python -m icm_lib bench`` is the same)."""

from .dev.bench import main

if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
