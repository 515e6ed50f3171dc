"""The rule set: every threshold, code and recommendation the engine uses, as cited data.

A rule set is a JSON document validated by `RuleSet`. The packaged default lives in
`interpretation/rulesets/default.json`; a deployment may supply its own file (`TDM_RULESET`).
Code never holds a clinical number: if a value matters, it is here, with a citation.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Annotated, Literal, cast

from pydantic import Field, StringConstraints, ValidationError, model_validator

from interpretation.lab_result import (
    Frozen,
    Goal,
    Phase,
    Route,
    TreatmentContext,
)
from interpretation.quantities import unit_key

RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Positive = Annotated[Decimal, Field(gt=0)]


class Citation(Frozen):
    """Where a number or a recommendation comes from, precise enough for a reviewer to find it."""

    id: RuleId
    title: Text
    source: Text


class ContextMatch(Frozen):
    """The treatment context a target applies to; an unset field matches anything."""

    phase: Phase | None = None
    week: Annotated[int, Field(ge=0)] | None = None
    route: Route | None = None
    goal: Goal | None = None

    def matches(self, context: TreatmentContext) -> bool:
        wanted = self.model_dump(exclude_none=True)
        have = context.model_dump()
        return all(have[key] == value for key, value in wanted.items())

    def describe(self) -> str:
        return self.describe_set_fields() or "any context"


class DrugLevelTarget(Frozen):
    """A target trough range for one context; a level below `low` is subtherapeutic.

    Bounds are inclusive: a level exactly at `low` or `high` is therapeutic.
    """

    id: RuleId
    description: Text
    when: ContextMatch
    low: Positive | None = None
    high: Positive | None = None
    unit: Literal["ug/mL"] = "ug/mL"
    citation: RuleId

    @model_validator(mode="after")
    def _bounds_make_sense(self) -> DrugLevelTarget:
        if self.low is None and self.high is None:
            raise ValueError(f"target {self.id!r} needs a low or a high bound")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"target {self.id!r} has low {self.low} above high {self.high}")
        return self

    def describe_range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low}-{self.high} {self.unit}"
        if self.low is not None:
            return f">= {self.low} {self.unit}"
        return f"<= {self.high} {self.unit}"


class AntibodyAssay(Frozen):
    """A known antibody assay and its positivity cut-off, applied only to its own codes and unit."""

    id: RuleId
    description: Text
    codes: tuple[Annotated[str, StringConstraints(min_length=1)], ...] = Field(min_length=1)
    unit: Text
    positive_at_or_above: Positive
    citation: RuleId

    def applies_to(self, code: str, unit: str | None) -> bool:
        return code in self.codes and unit is not None and unit_key(unit) == unit_key(self.unit)


class Recognition(Frozen):
    """How infliximab and anti-infliximab antibody results are told apart from everything else."""

    drug_level_codes: tuple[str, ...] = Field(min_length=1)
    antibody_codes: tuple[str, ...] = ()
    # Display-name fallback: a name counts when it holds one of `drug_names`; it is an
    # antibody result when it also holds one of `antibody_markers` (as a whole word).
    drug_names: tuple[str, ...] = Field(min_length=1)
    antibody_markers: tuple[str, ...] = Field(min_length=1)
    citation: RuleId


class Recommendation(Frozen):
    text: Text
    citations: tuple[RuleId, ...] = Field(min_length=1)


RecommendationKey = Literal[
    "subtherapeutic",
    "therapeutic",
    "supratherapeutic",
    "antibodies_detected",
    "antibodies_not_detected",
    "immunogenic_failure",
    "non_immune_low_level",
    "antibodies_with_adequate_level",
    "adequate_without_antibodies",
]


class Plausibility(Frozen):
    """Values beyond these are treated as errors of entry or units, never interpreted."""

    max_drug_level_ug_per_ml: Positive
    citation: RuleId


class RuleSet(Frozen):
    """A complete, versioned, cited set of interpretation rules."""

    version: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    description: Text
    defaults: TreatmentContext
    citations: tuple[Citation, ...] = Field(min_length=1)
    recognition: Recognition
    drug_level_targets: tuple[DrugLevelTarget, ...] = Field(min_length=1)
    antibody_assays: tuple[AntibodyAssay, ...] = ()
    recommendations: dict[RecommendationKey, Recommendation]
    plausibility: Plausibility

    @model_validator(mode="after")
    def _references_resolve(self) -> RuleSet:
        known = {c.id for c in self.citations}
        ids = [t.id for t in self.drug_level_targets] + [a.id for a in self.antibody_assays]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(duplicates)}")
        cited = [
            *(t.citation for t in self.drug_level_targets),
            *(a.citation for a in self.antibody_assays),
            self.recognition.citation,
            self.plausibility.citation,
            *(c for r in self.recommendations.values() for c in r.citations),
        ]
        missing = sorted(set(cited) - known)
        if missing:
            raise ValueError(f"citations referenced but not defined: {', '.join(missing)}")
        return self

    def advice(self, key: str) -> Recommendation | None:
        """The recommendation for a finding or pattern value, if the rule set has one."""
        return self.recommendations.get(cast(RecommendationKey, key))

    def citation(self, citation_id: str) -> Citation:
        return next(c for c in self.citations if c.id == citation_id)

    def target_for(self, context: TreatmentContext) -> DrugLevelTarget | None:
        """The first target, in file order, whose context matches; order encodes precedence."""
        return next((t for t in self.drug_level_targets if t.when.matches(context)), None)


class RuleSetError(ValueError):
    """A rule file could not be read or is not a valid rule set; the message lists every problem."""


def parse_ruleset(text: str | bytes, origin: str = "rule set") -> RuleSet:
    """Validate rule-set JSON, turning pydantic's errors into one readable message."""
    try:
        return RuleSet.model_validate_json(text)
    except ValidationError as err:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors(include_url=False, include_input=False)
        )
        raise RuleSetError(f"{origin} is not a valid rule set:\n{problems}") from err
    except json.JSONDecodeError as err:  # pragma: no cover - pydantic reports JSON errors itself
        raise RuleSetError(f"{origin} is not JSON: {err}") from err


@cache
def default_ruleset() -> RuleSet:
    """The packaged, cited default rule set."""
    text = resources.files("interpretation").joinpath("rulesets/default.json").read_text("utf-8")
    return parse_ruleset(text, "packaged default rule set")
