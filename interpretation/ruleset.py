"""The rule set: every threshold, code and recommendation the engine uses, as cited data.

A rule set is a JSON document validated by `RuleSet`. The packaged default lives in
`interpretation/rulesets/default.json`; a deployment may supply its own file (`TDM_RULESET`).
Code never holds a clinical number: if a value matters, it is here, with a citation.
"""

from __future__ import annotations

import json
from decimal import Decimal
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Annotated, Literal, cast

from pydantic import Field, StringConstraints, ValidationError, model_validator

from interpretation.lab_result import (
    Frozen,
    Goal,
    Indication,
    Monitoring,
    Phase,
    Route,
    TreatmentContext,
    validation_problems,
)
from interpretation.numbers import NumberStyle
from interpretation.quantities import unit_key

RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Positive = Annotated[Decimal, Field(gt=0)]


class Citation(Frozen):
    """A published source for a number or a recommendation, cited so a reviewer can find it.

    `claim` is what the rule set takes from the source; the rest is the bibliographic record.
    A DOI or PMID is given only where a reliable record of it was found.
    """

    id: RuleId
    claim: Text
    authors: Text
    title: Text
    published_in: Text
    year: Annotated[int, Field(ge=1900, le=2100)]
    locator: Annotated[str, StringConstraints(max_length=100)] | None = None
    doi: Annotated[str, StringConstraints(pattern=r"^10\.\d{4,9}/\S+$")] | None = None
    pmid: Annotated[str, StringConstraints(pattern=r"^\d{1,9}$")] | None = None

    def reference(self) -> str:
        """The citation in the usual Vancouver-like form, e.g. for `rules show`."""
        where = f"{self.published_in}. {self.year}" + (f";{self.locator}" if self.locator else "")
        ids = "".join((f" doi:{self.doi}." if self.doi else "", f" PMID: {self.pmid}." if self.pmid else ""))
        return f"{self.authors} {self.title}. {where}.{ids}"


class Recommendation(Frozen):
    text: Text
    citations: tuple[RuleId, ...] = Field(min_length=1)


RecommendationKey = Literal[
    "subtherapeutic",
    "therapeutic",
    "above_target",
    "above_target_maintenance",
    "antibodies_detected",
    "antibodies_not_detected",
    "immunogenic_failure",
    "low_level_with_low_titre_antibodies",
    "non_immune_low_level",
    "antibodies_with_adequate_level",
    "adequate_without_antibodies",
]


class ContextMatch(Frozen):
    """The treatment context a target applies to; an unset field matches anything."""

    phase: Phase | None = None
    week: Annotated[int, Field(ge=0)] | None = None
    route: Route | None = None
    goal: Goal | None = None
    monitoring: Monitoring | None = None
    indication: Indication | None = None

    # Read field by field: a result is matched against every target, and two model_dump calls
    # per target were a fifth of interpreting it.
    def matches(self, context: TreatmentContext) -> bool:
        return all(
            (wanted := getattr(self, key)) is None or getattr(context, key) == wanted
            for key in _MATCHED_FIELDS
        )

    def could_match(self, context: TreatmentContext) -> bool:
        """True unless something the context does know rules this target out."""
        return all(
            (wanted := getattr(self, key)) is None or getattr(context, key) in (None, wanted)
            for key in _MATCHED_FIELDS
        )

    def describe(self) -> str:
        return self.describe_set_fields() or "any context"


# Read through a class property on every access: worth keeping as a plain tuple.
_MATCHED_FIELDS = tuple(ContextMatch.model_fields)


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
    # The advice for a level above `high`, where one applies only in this target's context
    # (de-escalation is a maintenance decision); otherwise the generic "above_target" advice.
    advice_above: RecommendationKey | None = None

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
    """A known antibody assay and its positivity cut-off, applied only to its own codes and unit.

    Naming the performing lab makes the cut-off the first evidence for that lab's results;
    without it, the reporting lab's own reference interval and flag outrank the cut-off.
    """

    id: RuleId
    description: Text
    codes: tuple[Annotated[str, StringConstraints(min_length=1)], ...] = Field(min_length=1)
    unit: Text
    positive_at_or_above: Positive
    performing_lab: Text | None = None
    citation: RuleId
    # Where the assay's documentation defines a high titre (cited): below it, antibodies with a
    # low level may be transient or overcome by dose intensification, and are graded so.
    high_titre_at_or_above: Positive | None = None
    high_titre_citation: RuleId | None = None

    @model_validator(mode="after")
    def _high_titre_is_cited_and_above_positive(self) -> AntibodyAssay:
        if (self.high_titre_at_or_above is None) != (self.high_titre_citation is None):
            raise ValueError("high_titre_at_or_above and high_titre_citation go together")
        if (
            self.high_titre_at_or_above is not None
            and self.high_titre_at_or_above <= self.positive_at_or_above
        ):
            raise ValueError("high_titre_at_or_above must be above positive_at_or_above")
        return self

    def applies_to(self, code: str, unit: str | None, performing_lab: str | None) -> bool:
        if self.performing_lab is not None and (
            performing_lab is None or performing_lab.strip().lower() != self.performing_lab.lower()
        ):
            return False
        return code in self.codes and unit is not None and unit_key(unit) == unit_key(self.unit)


class CovariateCodes(Frozen):
    """Codes of the results the next-trough forecast reads as covariates; they never alert."""

    albumin: tuple[str, ...] = ()  # serum or plasma albumin, mass/volume
    body_weight: tuple[str, ...] = ()
    citations: tuple[RuleId, ...] = Field(min_length=1)

    @property
    def every_code(self) -> frozenset[str]:
        return frozenset((*self.albumin, *self.body_weight))


class Recognition(Frozen):
    """How infliximab and anti-infliximab antibody results are told apart from everything else."""

    drug_level_codes: tuple[str, ...] = Field(min_length=1)
    antibody_codes: tuple[str, ...] = ()
    # Display-name fallback: a name counts when it holds one of `drug_names`; it is an
    # antibody result when it also holds one of `antibody_markers` (as a whole word).
    drug_names: tuple[str, ...] = Field(min_length=1)
    antibody_markers: tuple[str, ...] = Field(min_length=1)
    # Words after which a name describes a test the lab may add ("with reflex to Ab"), and
    # words that join a level and antibodies into a panel name ("Infliximab and antibodies").
    reflex_markers: tuple[str, ...] = ()
    panel_markers: tuple[str, ...] = ()
    # Units only one of the two analytes is reported in; ng/mL is used by both and is in neither.
    drug_level_units: tuple[str, ...] = ()
    antibody_units: tuple[str, ...] = ()
    shared_units: tuple[str, ...] = ()
    # Brands that exist only as a subcutaneous product: naming one sets the route.
    subcutaneous_brands: tuple[str, ...] = ()
    citation: RuleId
    covariates: CovariateCodes | None = None

    def known_unit(self, unit: str | None) -> str | None:
        """The vocabulary's spelling of `unit`, or None when it is not a unit we know.

        Only a known unit is ever repeated in an alert: a free-text field can hold anything.
        """
        if not unit:
            return None
        key = unit_key(unit)
        return next(
            (
                u
                for u in (*self.drug_level_units, *self.antibody_units, *self.shared_units)
                if unit_key(u) == key
            ),
            None,
        )


class AssayLimits(Frozen):
    """What a drug level reported only as text ("Undetectable", "<LOQ") means as a number."""

    limit_of_quantitation_ug_per_ml: Positive
    citation: RuleId


class TroughTiming(Frozen):
    """When a sample counts as a trough: drawn in the last part of the dosing interval.

    A level drawn earlier is higher than the trough, so it can only be read when it is low
    (the trough will be lower still).
    """

    earliest_fraction_of_interval: Annotated[Decimal, Field(gt=0, lt=1)]
    default_interval_days: dict[Route, Annotated[int, Field(ge=1, le=365)]] = Field(default_factory=dict)
    citations: tuple[RuleId, ...] = Field(min_length=1)


class FollowUpKind(StrEnum):
    """What a follow-up waits for."""

    # The antibody result the rule set asks for beside a low level (a reflex test, often days later).
    ANTIBODIES_NOT_RESULTED = "antibodies_not_resulted"
    # A critical or high page nobody acknowledged (an operational setting, not a rule: see
    # CorrelationRules.escalate_after_minutes).
    NOT_ACKNOWLEDGED = "not_acknowledged"


class FollowUpRule(Frozen):
    """A result the service expects after another, and how long it waits before saying it is missing.

    Due `due_after_hours` after the specimen of the result that opened it was drawn, and never
    sooner than `least_wait_hours` after the service read that result (a result read late, from a
    backlog or a slow feed, gets the test's shortest turnaround before anyone is told it is late).
    """

    id: RuleId
    kind: FollowUpKind
    due_after_hours: Annotated[Decimal, Field(gt=0, le=24 * 365)]
    least_wait_hours: Annotated[Decimal, Field(ge=0, le=24 * 365)]
    text: Text  # what the follow-up event tells the clinician to do
    citations: tuple[RuleId, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _least_within_due(self) -> FollowUpRule:
        if self.least_wait_hours > self.due_after_hours:
            raise ValueError("least_wait_hours must not exceed due_after_hours")
        return self


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
    assay_limits: AssayLimits
    trough_timing: TroughTiming | None = None
    # Level alerts carry a next-trough forecast from the packaged population model (README
    # 'Forecast'); false turns it off.
    forecast: bool = True
    # What the service expects after a result, and when it says it is missing (issue 39).
    follow_ups: tuple[FollowUpRule, ...] = ()
    # How each performing lab writes numbers, where it is known ("1,234": thousands or decimals).
    number_styles: dict[Annotated[str, StringConstraints(min_length=1)], NumberStyle] = Field(
        default_factory=dict
    )

    def number_style_for(self, performing_lab: str | None) -> NumberStyle | None:
        if performing_lab is None or not self.number_styles:
            return None
        wanted = performing_lab.strip().lower()
        return next((style for lab, style in self.number_styles.items() if lab.lower() == wanted), None)

    @model_validator(mode="after")
    def _references_resolve(self) -> RuleSet:
        known = {c.id for c in self.citations}
        ids = [
            *(t.id for t in self.drug_level_targets),
            *(a.id for a in self.antibody_assays),
            *(f.id for f in self.follow_ups),
        ]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(duplicates)}")
        cited = [
            *(t.citation for t in self.drug_level_targets),
            *(a.citation for a in self.antibody_assays),
            *(a.high_titre_citation for a in self.antibody_assays if a.high_titre_citation),
            self.recognition.citation,
            self.plausibility.citation,
            self.assay_limits.citation,
            *(self.trough_timing.citations if self.trough_timing else ()),
            *(self.recognition.covariates.citations if self.recognition.covariates else ()),
            *(c for r in self.recommendations.values() for c in r.citations),
            *(c for f in self.follow_ups for c in f.citations),
        ]
        missing = sorted(set(cited) - known)
        if missing:
            raise ValueError(f"citations referenced but not defined: {', '.join(missing)}")
        return self

    def advice(self, key: str) -> Recommendation | None:
        """The recommendation for a finding or pattern value, if the rule set has one."""
        return self.recommendations.get(cast(RecommendationKey, key))

    def follow_up(self, kind: FollowUpKind) -> FollowUpRule | None:
        return next((f for f in self.follow_ups if f.kind is kind), None)

    def citation(self, citation_id: str) -> Citation:
        return next(c for c in self.citations if c.id == citation_id)

    def target_for(self, context: TreatmentContext) -> DrugLevelTarget | None:
        """The first target, in file order, whose context matches; order encodes precedence."""
        return next((t for t in self.drug_level_targets if t.when.matches(context)), None)

    def lowest_target_that_could_apply(self, context: TreatmentContext) -> DrugLevelTarget | None:
        """Among targets the known context does not rule out, the one with the lowest floor.

        A level below it is low whichever of them the patient's real context would select. Called
        when no target fits the context exactly, so a week with no threshold of its own (induction
        week 2 or 10) takes the lowest threshold of its phase: a level below every published
        induction threshold is low in induction whatever the week.
        """
        known = context.model_copy(update={"week": None})
        floors = [t for t in self.drug_level_targets if t.low is not None and t.when.could_match(known)]
        return min(floors, key=lambda t: t.low or 0, default=None)


class RuleSetError(ValueError):
    """A rule file could not be read or is not a valid rule set; the message lists every problem."""


def parse_ruleset(text: str | bytes, origin: str = "rule set") -> RuleSet:
    """Validate rule-set JSON, turning pydantic's errors into one readable message.

    A document with `"extends": NAME` starts from the packaged rule set NAME and replaces its
    top-level sections with the ones it gives, so a variant states only what differs.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RuleSetError(f"{origin} is not JSON: {err}") from err
    if isinstance(data, dict) and "extends" in data:
        base = data.pop("extends")
        if base not in PACKAGED_RULESETS:
            known = ", ".join(sorted(PACKAGED_RULESETS))
            raise RuleSetError(f"{origin} extends an unknown rule set; packaged ones are: {known}")
        data = {**json.loads(_packaged_text(base)), **data}
    try:
        return RuleSet.model_validate(data)
    except ValidationError as err:
        problems = "\n".join(f"  - {problem}" for problem in validation_problems(err, "(top level)"))
        raise RuleSetError(f"{origin} is not a valid rule set:\n{problems}") from err


# Rule sets shipped in the package, selectable by name (TDM_RULESET=reactive).
PACKAGED_RULESETS = frozenset({"default", "reactive", "consensus"})


def _packaged_text(name: str) -> str:
    return resources.files("interpretation").joinpath(f"rulesets/{name}.json").read_text("utf-8")


@cache
def packaged_ruleset(name: str) -> RuleSet:
    """A rule set shipped with the package, by name."""
    if name not in PACKAGED_RULESETS:
        raise RuleSetError(
            f"no packaged rule set {name!r}; packaged ones are: {', '.join(sorted(PACKAGED_RULESETS))}"
        )
    return parse_ruleset(_packaged_text(name), f"packaged rule set {name!r}")


def default_ruleset() -> RuleSet:
    """The packaged, cited default rule set."""
    return packaged_ruleset("default")
