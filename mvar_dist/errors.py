"""The error policy of every command: an expected failure prints one `error:` line and exits 2.

Expected failures are the operator's to fix: bad input, a missing or damaged file, a bad config,
missing credentials, a full disk, a destination that cannot be written, a run that diverged. They
are raised as `OperatorError` (or one of the standard types listed in `is_expected`) with a message
that names the thing and says what to do. Anything else is a bug and keeps its traceback.

`run_cli(main, argv)` applies the policy; `--debug` anywhere on the command line, or
MVAR_DIST_DEBUG=1, also prints the traceback of an expected failure.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Callable, List, Optional, Sequence

DEBUG_ENV = "MVAR_DIST_DEBUG"
EXIT_OPERATOR = 2

# Exception class names (from libraries imported lazily) that always mean "fix your setup".
_EXPECTED_NAMES = {"NoCredentialsError": "no S3 credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                                         "or AWS_PROFILE (and AWS_ENDPOINT_URL for a non-AWS store)",
                   "PartialCredentialsError": "incomplete S3 credentials: set both AWS_ACCESS_KEY_ID and "
                                              "AWS_SECRET_ACCESS_KEY",
                   "NoSuchBucket": "", "ShardError": "", "CheckpointDamaged": "", "BadStepsError": "",
                   "InceptionWeightsError": "", "ReferenceError": "", "ArrowInvalid": ""}


class OperatorError(Exception):
    """A failure the operator can fix; the message says what is wrong and what to do."""


def no_space_message(path, err: BaseException) -> str:
    return (f"no space left on the device holding {path} ({err}); free space or point the output elsewhere, "
            f"then rerun (completed checkpoints are intact)")


def is_no_space(err: BaseException) -> bool:
    """ENOSPC, also as torch.save reports it from its zip writer ("unexpected pos")."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left" in text or "unexpected pos" in text


def is_expected(err: BaseException) -> bool:
    # ValueError covers config.errors.ConfigError (a ValueError that names its key).
    if isinstance(err, (OperatorError, ValueError, OSError)):
        return True
    return any(cls.__name__ in _EXPECTED_NAMES for cls in type(err).__mro__) or is_no_space(err)


def one_line(err: BaseException) -> str:
    """The message of an expected failure on one line (long tails of subprocess output are cut)."""
    hint = next((_EXPECTED_NAMES[c.__name__] for c in type(err).__mro__ if _EXPECTED_NAMES.get(c.__name__)), "")
    text = hint or str(err) or type(err).__name__
    if is_no_space(err) and "no space left" not in text:
        text = f"no space left on device ({text}); free space or point the output elsewhere, then rerun"
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:6]) if lines else type(err).__name__


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in (argv or ())


def strip_debug(argv: Sequence[str]) -> List[str]:
    return [a for a in argv if a != "--debug"]


def run_cli(main: Callable[[List[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Call main(argv without --debug) under the error policy; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    try:
        return main(strip_debug(argv))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # noqa: BLE001  the policy decides: expected -> one line, else re-raise
        if not is_expected(e):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_OPERATOR
