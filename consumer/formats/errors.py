"""What every decoder shares: the one error it raises, and how it builds a checked result."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from consumer.dead_letters import Reason
from interpretation import LabResult

# Whether an observation (code, display name) is about infliximab. Decoders ask it before
# building a result, so the other 99% of a feed is skipped unvalidated: a glucose result
# with an odd status is not this service's business and must not dead-letter a panel.
Relevance = Callable[[str, str | None], bool]


class DecodeError(ValueError):
    """The bytes are not a lab message this service can read; `reason` is a metrics-safe label."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@cache
def _known_field_names() -> frozenset[str]:
    """Every field name (and alias) of the models this service defines."""
    names: set[str] = set()
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if model.__module__.split(".")[0] in ("consumer", "interpretation"):
            for name, info in model.model_fields.items():
                names.add(name)
                if info.alias:
                    names.add(info.alias)
    return frozenset(names)


def _safe_location(loc: tuple[int | str, ...]) -> str:
    """A field path by position and by our own field names; a key the sender chose is not shown."""
    known = _known_field_names()
    return ".".join(str(p) if isinstance(p, int) or p in known else "<key>" for p in loc)


def _safe_message(error: ErrorDetails) -> str:
    # The only pydantic message that quotes the input is a tagged union's: say what was expected.
    if error["type"] == "union_tag_invalid":
        expected = (error.get("ctx") or {}).get("expected_tags", "")
        return f"the tag is not one of the expected ones ({expected})"
    return error["msg"]


def describe_validation_error(err: ValidationError) -> str:
    """pydantic's error list without the offending input values or keys, which may be patient data."""
    parts = [
        f"{_safe_location(e['loc']) or '(message)'}: {_safe_message(e)}"
        for e in err.errors(include_url=False, include_input=False)[:5]
    ]
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "; ".join(parts) + more


def json_refusal(err: ValidationError, what: str) -> DecodeError:
    """The DecodeError for a model validated straight from JSON bytes (`what`: the format's name)."""
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        # The parser's own words name a position, never the content.
        detail = str((first.get("ctx") or {}).get("error", first["msg"]))
        return DecodeError(Reason.UNDECODABLE, f"not valid JSON: {detail[:200]}")
    if first["type"] in ("model_type", "dict_type") and not first["loc"]:
        shown = type(first["input"]).__name__  # a type's name, never the value
        return DecodeError(Reason.INVALID, f"a {what} message is a JSON object, not {shown}")
    return DecodeError(Reason.INVALID, describe_validation_error(err))


def lab_result(where: str, **fields: Any) -> LabResult:
    """A `LabResult`, or a DecodeError naming `where` in the message (an OBX, an Observation)."""
    try:
        return LabResult(**fields)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, f"{where}: {describe_validation_error(err)}") from err


def truncated(text: str, limit: int) -> str:
    """Free text cut to a model's limit, marked so a reader knows it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
