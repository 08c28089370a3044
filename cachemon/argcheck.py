"""Checks the command-line shells (`cachemon`, `jobs`) apply to arguments
argparse accepted, so an out-of-range value is one clear error, never a
traceback from deep inside."""

from __future__ import annotations

import math
import stat

from cachemon.errors import InputError

# Row counts a command may ask for (--top, --limit, --keys): far above any
# real use, far below what the store's integer parameters hold.
MAX_ROWS = 100_000
# Ids are the store's INTEGER (32-bit) columns.
MAX_ID = 2**31 - 1


def check_utf8(argv: list[str]) -> None:
    """Refuse an argument that is not valid UTF-8 (Python carries its bytes
    as lone surrogates): it could reach neither the store nor a message."""
    for i, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise InputError(f"argument {i} ({shown}) is not valid UTF-8") from None


def bounded(value: int, what: str, low: int, high: int = MAX_ROWS) -> int:
    """An integer argument within [low, high], or a clear error."""
    if not low <= value <= high:
        raise InputError(f"{what} must be from {low} to {high:,}, got {value}")
    return value


def finite(value: float, what: str, low: float, high: float) -> float:
    """A finite number in (low, high] (nan and inf parse as floats)."""
    if not (math.isfinite(value) and low < value <= high):
        raise InputError(f"{what} must be a number above {low:g} and at most {high:g}, got {value}")
    return value


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"
