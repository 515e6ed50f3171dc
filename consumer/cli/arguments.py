"""Argument types shared by the command line's verbs."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TypeAlias

# argparse names the type of add_subparsers() privately; it is the documented return value.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # noqa: SLF001


def positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def aware_time(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset: a bare time would silently mean this machine's zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one, for example {text}+00:00 or {text}Z"
        )
    return moment
