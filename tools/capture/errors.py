"""Typed errors of the capture tools, so callers can tell bad input from bugs."""

import sys
from typing import Callable


class CaptureError(Exception):
    """Base class of every error raised on purpose by the capture tools."""


class MissingFileError(CaptureError):
    """A required input file (model, corpus, manifest, shard) does not exist."""


class ChecksumError(CaptureError):
    """A file's sha256 (or a shard header's sha256) differs from the recorded one."""


class CorruptInputError(CaptureError):
    """An input file exists but its content is malformed or inconsistent."""


class ParameterMismatchError(CaptureError):
    """A resumed capture was started with parameters that differ from its manifest."""


def run_cli(action: Callable[[], object], errors: tuple = ()) -> int:
    """Runs a command's action: a CaptureError (or one of `errors`) becomes one "error: ..." line
    on stderr and exit status 1; success is exit status 0."""
    try:
        action()
    except (CaptureError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
