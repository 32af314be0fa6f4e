"""How ``train.py`` and ``evaluate.py`` end on an error: one paragraph naming the problem and the fix, a
non-zero exit status, and Python's traceback only with ``--debug``."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_HELP = "on an error, show Python's full traceback instead of the one-paragraph message"

# Matched by class name (any class in the error's MRO), so a config error needs no torch import to be described.
# name: (prefix of the message, exit status)
KNOWN_ERRORS = {
    "ConfigError": ("config error", 2),
    "LoggerUnavailableError": ("logger error", 2),
    "ResumeError": ("resume error", 2),
    "RunDirError": ("run directory error", 2),
    "WarmStartError": ("init_backbone error", 2),
    "CheckpointSaveError": ("checkpoint error", 1),
    "UnsafeCheckpointError": ("checkpoint error", 2),
    "CheckpointReadError": ("checkpoint error", 2),
    "DataError": ("data error", 1),
    "NonFiniteLossError": ("training stopped", 1),
    "FileNotFoundError": ("error", 2),
}


def describe(err: BaseException) -> tuple[str, int]:
    """The message a user reads, on one paragraph, and the exit status."""
    text = " ".join(str(err).split())
    for cls in type(err).__mro__:
        if cls.__name__ in KNOWN_ERRORS:
            prefix, status = KNOWN_ERRORS[cls.__name__]
            return f"{prefix}: {text}", status
    return (f"unexpected error: {type(err).__name__}: {text or 'no message'}. This is a bug or an environment "
            f"problem; rerun with {DEBUG_FLAG} for the full traceback and report it with the command line"), 1


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``, with any error turned into :func:`describe`'s message on stderr (unless ``--debug``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in argv:
        return main(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the whole point: no traceback reaches the user
        message, status = describe(err)
        print(message, file=sys.stderr)
        return status
