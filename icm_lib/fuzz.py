"""``python -m icm_lib.fuzz ...``: the fuzzer under its first name; it lives in
:mod:`icm_lib.dev.fuzz` with the other developer tools (``python -m icm_lib fuzz`` is the same)."""

from .dev.fuzz import main

if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
