"""Reading a result with what is remembered of the patient: pairs, corrections, incidents.

`correlate(state, interpretation, ...)` is pure: state in, new state and events out, with every
time taken from the messages. The rules, as a TDM pharmacist applies them:

- A level and an antibody result belong together when they share a specimen id or accession,
  or failing that were collected within the pair window. Either may come first, up to the
  partner keep time apart. A pair is one incident: the second result updates the incident the
  first opened (immunogenic failure escalates it to critical), or triggers one if only the pair
  calls for attention.
- A corrected result replaces the one it corrects (same result id, else same specimen or
  accession and analyte): the incident is updated while still abnormal, else resolved. An
  entered-in-error or cancelled result resolves its incident with the reason.
- A preliminary result never pages; the final after it does.
- Every event carries the patient's previous levels and the change from the last one; a
  level's events carry its next-trough forecast (`interpretation.pk.next_trough`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from interpretation.alerts import (
    Action,
    Alert,
    Category,
    Partner,
    PreviousLevel,
    Severity,
    SourceRef,
    category_of,
    event_for,
    incident_key,
    needs_review,
    result_fingerprint,
    severity_of,
)
from interpretation.engine import interpret, pattern_of
from interpretation.findings import (
    Analyte,
    AntibodyFinding,
    AntibodyInterpretation,
    DrugLevelFinding,
    DrugLevelInterpretation,
    Interpretation,
    Pattern,
)
from interpretation.follow_ups import follow_through
from interpretation.lab_result import LabResult, TreatmentContext, as_utc
from interpretation.patient_state import CorrelationRules, OpenIncident, PatientState, RememberedResult
from interpretation.pk.forecast import Forecast, RefusalCode, Refused
from interpretation.pk.next_trough import forecast_for
from interpretation.review import ReviewReason
from interpretation.ruleset import RuleSet
from interpretation.treatment import TreatmentRecord

# Patterns that call for attention; "adequate level without antibodies" does not.
_ALERTING_PATTERNS = frozenset(set(Pattern) - {Pattern.ADEQUATE_WITHOUT_ANTIBODIES})
_EARLIEST = datetime.min.replace(tzinfo=UTC)
DEFAULT_RULES = CorrelationRules()


def result_key(result: LabResult, analyte: Analyte) -> str:
    """What a correction of this result shares with it: the result id, else the draw and analyte.

    A result with neither is its own key: without an identity nothing can claim to correct it.
    """
    if result.result_id:
        return f"id:{result.result_id}"
    where = result.specimen_id or result.accession
    if where:
        return f"{analyte.value}:{where}"
    return f"{analyte.value}:report:{result_fingerprint(result)}"


def _remember(interpretation: Interpretation) -> RememberedResult:
    r = interpretation.result
    return RememberedResult(
        key=result_key(r, interpretation.analyte),
        fingerprint=result_fingerprint(r),
        analyte=interpretation.analyte,
        specimen_id=r.specimen_id,
        accession=r.accession,
        collected_at=as_utc(r.collected_at) if r.collected_at else None,
        status=r.status,
        finding=interpretation.finding,
        value=interpretation.value,
        comparator=interpretation.comparator,
        unit=interpretation.unit,
        titre=interpretation.titre if isinstance(interpretation, AntibodyInterpretation) else None,
    )


def _shares_draw(a: RememberedResult, b: RememberedResult) -> bool:
    return bool(
        (a.specimen_id and a.specimen_id == b.specimen_id) or (a.accession and a.accession == b.accession)
    )


def _partner_of(
    new: RememberedResult, kept: tuple[RememberedResult, ...], rules: CorrelationRules
) -> RememberedResult | None:
    """The released result of the other analyte from the same draw: shared ids, else nearest in time."""
    window, keep = timedelta(hours=rules.pair_window_hours), timedelta(days=rules.partner_keep_days)

    def apart(r: RememberedResult) -> timedelta | None:
        if r.collected_at is None or new.collected_at is None:
            return None
        return abs(r.collected_at - new.collected_at)

    candidates = [
        r
        for r in kept
        if r.analyte is not new.analyte
        and r.status.may_page
        and r.finding.value != "uninterpretable"
        and ((gap := apart(r)) is None or gap <= keep)
    ]
    sharing = [r for r in candidates if _shares_draw(new, r)]
    if sharing:
        return sharing[-1]
    near = [(gap, r) for r in candidates if (gap := apart(r)) is not None and gap <= window]
    return min(near, key=lambda pair: pair[0])[1] if near else None


def _as_partner(r: RememberedResult) -> Partner:
    return Partner(
        analyte=r.analyte.value,
        finding=r.finding,
        value=r.value,
        comparator=r.comparator,
        unit=r.unit,
        collected_at=r.collected_at,
        specimen_id=r.specimen_id,
        accession=r.accession,
    )


def _previous_levels(
    kept: tuple[RememberedResult, ...], new: RememberedResult, rules: CorrelationRules
) -> tuple[PreviousLevel, ...]:
    """Earlier readable levels, newest first."""
    earlier = [
        r
        for r in kept
        if r.analyte is Analyte.INFLIXIMAB
        and r.value is not None
        and r.status.may_page
        and isinstance(r.finding, DrugLevelFinding)
        and r.finding is not DrugLevelFinding.UNINTERPRETABLE
        and (new.collected_at is None or r.collected_at is None or r.collected_at <= new.collected_at)
    ]
    earlier.sort(key=lambda r: r.collected_at or _EARLIEST, reverse=True)
    return tuple(
        PreviousLevel(
            value=r.value,
            comparator=r.comparator,
            unit=r.unit or "ug/mL",
            collected_at=r.collected_at,
            finding=r.finding,
        )
        for r in earlier[: rules.previous_levels]
        if r.value is not None and isinstance(r.finding, DrugLevelFinding)
    )


def _with_pattern(interpretation: Interpretation, pattern: Pattern, ruleset: RuleSet) -> Interpretation:
    advice = ruleset.advice(pattern.value)
    if advice is None:
        return interpretation.model_copy(update={"pattern": pattern})
    cited = (*interpretation.citations, *(ruleset.citation(c) for c in advice.citations))
    return interpretation.model_copy(
        update={"pattern": pattern, "recommendation": advice.text, "citations": tuple(dict.fromkeys(cited))}
    )


class _Fold:
    """The state being built for one result: remembered results, open incidents, events."""

    def __init__(self, state: PatientState, source: SourceRef, read_at: datetime | None) -> None:
        self.state = state
        self.source = source
        self.read_at = read_at  # when the result was read: an incident it opens was opened then
        self.kept = state.results
        self.incidents = list(state.incidents)
        self.events: list[Alert] = []

    def detach(self, incident: OpenIncident) -> None:
        self.kept = tuple(
            r.model_copy(update={"incident_key": None}) if r.incident_key == incident.key else r
            for r in self.kept
        )

    def emit(
        self,
        described_by: Interpretation,
        action: Action,
        incident: OpenIncident,
        *,
        partner: Partner | None = None,
        previous: tuple[PreviousLevel, ...] = (),
        reason: str | None = None,
        severity: Severity | None = None,
    ) -> None:
        """Add the event `action` on `incident`, described by an interpretation."""
        self.events.append(
            event_for(
                described_by,
                self.source,
                action=action,
                incident=incident.key,
                category=incident.category,
                partner=partner,
                previous_levels=previous,
                resolve_reason=reason,
                severity=severity,
            )
        )

    def resolve(self, incident: OpenIncident, reason: str, described_by: Interpretation) -> None:
        self.incidents.remove(incident)
        self.detach(incident)
        self.emit(described_by, Action.RESOLVE, incident, reason=reason)

    def done(self, rules: CorrelationRules, seen: datetime | None) -> tuple[PatientState, list[Alert]]:
        open_keys = {i.key for i in self.incidents}
        results = _pruned(self.kept, seen, rules, open_keys)
        return (
            self.state.model_copy(
                update={"results": results, "incidents": tuple(self.incidents), "last_seen": seen}
            ),
            self.events,
        )


def _pruned(
    results: tuple[RememberedResult, ...], seen: datetime | None, rules: CorrelationRules, open_keys: set[str]
) -> tuple[RememberedResult, ...]:
    """Forget antibody results too old to be anyone's partner, then the oldest beyond the cap.

    Levels are kept longer (the trend a clinician reads); a result of an open incident stays.
    """
    if seen is not None:
        horizon = seen - timedelta(days=rules.partner_keep_days)
        results = tuple(
            r
            for r in results
            if r.analyte is Analyte.INFLIXIMAB
            or r.incident_key in open_keys
            or r.collected_at is None
            or r.collected_at >= horizon
        )
    while len(results) > rules.max_results:
        oldest = next((r for r in results if r.incident_key not in open_keys), results[0])
        results = tuple(r for r in results if r is not oldest)
    return results


def _stands_alone(r: RememberedResult) -> bool:
    """Whether a released result calls for attention by itself (a low level, antibodies present)."""
    return r.status.may_page and r.finding in (
        DrugLevelFinding.SUBTHERAPEUTIC,
        AntibodyFinding.ANTIBODIES_DETECTED,
    )


def _withdraw(fold: _Fold, incident: OpenIncident, interpretation: Interpretation) -> None:
    """A withdrawn result leaves its incident: resolved, unless another result of it still stands."""
    remaining = next((r for r in fold.kept if r.incident_key == incident.key and _stands_alone(r)), None)
    if remaining is None:
        fold.resolve(
            incident, f"the result was {interpretation.result.status.value.replace('_', ' ')}", interpretation
        )
        return
    fold.incidents[fold.incidents.index(incident)] = incident.model_copy(
        update={"severity": severity_of(None), "pattern": None}
    )
    fold.emit(interpretation, Action.UPDATE, incident, partner=_as_partner(remaining))


class _Facts(NamedTuple):
    """What an event says: the (paired) interpretation, its pattern, partner and history."""

    interpretation: Interpretation
    pattern: Pattern | None
    partner: Partner | None
    previous: tuple[PreviousLevel, ...]


def _decide(fold: _Fold, facts: _Facts, incident: OpenIncident | None, *, corrects: bool) -> str | None:
    """Trigger, update or resolve; return the incident the new result now belongs to."""
    interpretation, pattern = facts.interpretation, facts.pattern
    alerting = interpretation.alert or pattern in _ALERTING_PATTERNS

    def event(action: Action, incident: OpenIncident) -> None:
        fold.emit(interpretation, action, incident, partner=facts.partner, previous=facts.previous)

    if incident is not None and alerting:
        fold.incidents[fold.incidents.index(incident)] = incident.model_copy(
            update={"severity": severity_of(pattern), "pattern": pattern}
        )
        event(Action.UPDATE, incident)
        return incident.key
    unreadable = interpretation.finding.value == "uninterpretable"
    if incident is not None and unreadable and corrects:
        # A result that cannot be read says nothing about whether the problem is gone: it never
        # resolves or downgrades an incident. A correction of one of its results that cannot be
        # read is said on the incident, at the incident's severity.
        fold.emit(interpretation, Action.UPDATE, incident, partner=facts.partner, severity=incident.severity)
        return incident.key
    if unreadable:
        # Its own review incident (a ticket, never a page); an incident its partner opened stays
        # as it was (an indeterminate reflex result does not withdraw the low level's page).
        if not needs_review(interpretation):
            return None
        key = incident_key(interpretation.result, Category.REVIEW)
        opened = OpenIncident(
            key=key, category=Category.REVIEW, severity=Severity.LOW, pattern=None, opened_at=fold.read_at
        )
        fold.incidents.append(opened)
        fold.emit(interpretation, Action.TRIGGER, opened)
        return key
    if incident is not None:
        why = "corrected into range" if corrects else "read with its partner, nothing calls for attention"
        fold.resolve(incident, why, interpretation)
        return None
    if alerting:
        category = category_of(interpretation)
        key = incident_key(interpretation.result, category)
        opened = OpenIncident(
            key=key, category=category, severity=severity_of(pattern), pattern=pattern, opened_at=fold.read_at
        )
        fold.incidents.append(opened)
        event(Action.TRIGGER, opened)
        return key
    return None


def correlate(
    state: PatientState | None,
    interpretation: Interpretation,
    source: SourceRef,
    ruleset: RuleSet,
    rules: CorrelationRules = DEFAULT_RULES,
    *,
    read_at: datetime | None = None,
) -> tuple[PatientState, list[Alert]]:
    """Fold one interpreted result into the patient's state; return the new state and its events.

    `read_at` (when the result was read) stamps the incidents it opens (escalation counts from it)."""
    result = interpretation.result
    state = state or PatientState(patient_id=result.patient_id)
    fold = _Fold(state, source, read_at)
    new = _remember(interpretation)
    seen = max((t for t in (state.last_seen, new.collected_at) if t is not None), default=None)
    superseded = next((r for r in state.results if r.key == new.key), None)
    if superseded is not None and superseded.fingerprint == new.fingerprint:
        return state, []  # the same report again (a replay): nothing new to say
    if superseded is not None:
        fold.kept = tuple(r for r in fold.kept if r is not superseded)
    earlier = state.incident(superseded.incident_key) if superseded else None
    if (
        earlier is not None
        and earlier.category is Category.REVIEW
        and not result.status.is_withdrawn
        and interpretation.finding.value != "uninterpretable"
    ):
        # The result that needed review can now be read: the review is done, and the result is
        # read as new (it may page, or join its partner's incident).
        fold.resolve(earlier, "the corrected result can be read", interpretation)
        earlier = None

    if result.status.is_withdrawn:
        if earlier is not None:
            _withdraw(fold, earlier, interpretation)
        return fold.done(rules, seen)
    if not result.status.may_page:  # preliminary: remembered, never paged
        fold.kept = (*fold.kept, new)
        return fold.done(rules, seen)

    partner = _partner_of(new, fold.kept, rules)
    pattern = None
    if partner is not None:
        level, antibodies = (new, partner) if new.analyte is Analyte.INFLIXIMAB else (partner, new)
        if isinstance(level.finding, DrugLevelFinding) and isinstance(antibodies.finding, AntibodyFinding):
            pattern = pattern_of(level.finding, antibodies.finding, antibodies.titre)
    if pattern is not None:
        interpretation = _with_pattern(interpretation, pattern, ruleset)
    incident = earlier or (state.incident(partner.incident_key) if partner else None)
    facts = _Facts(
        interpretation,
        pattern,
        _as_partner(partner) if partner else None,
        _previous_levels(fold.kept, new, rules),
    )
    new = new.model_copy(
        update={"incident_key": _decide(fold, facts, incident, corrects=earlier is not None)}
    )
    joined = next((i for i in fold.incidents if i.key == new.incident_key), None)
    # The partner joins the new result's incident, unless that is the new result's own review:
    # the partner stays with its clinical incident, which its correction must still resolve.
    if partner is not None and joined is not None and joined.category is not Category.REVIEW:
        fold.kept = tuple(
            r.model_copy(update={"incident_key": new.incident_key}) if r is partner else r for r in fold.kept
        )
    fold.kept = (*fold.kept, new)
    after, events = fold.done(rules, seen)
    if ruleset.forecast and isinstance(interpretation, DrugLevelInterpretation):
        events = _with_forecast(events, after, interpretation)
    return after, events


FORECAST = "forecast"  # the model named on a refusal that came before any model was chosen


def _with_forecast(events: list[Alert], state: PatientState, level: DrugLevelInterpretation) -> list[Alert]:
    """The level's own events (not a resolve) carry its forecast, and their advice says it.

    Decision support only adds to a page: a forecast that fails is a refusal that says so
    (`internal_error`), never a lost page (issue 37)."""
    mine = [e.action is not Action.RESOLVE and isinstance(e.finding, DrugLevelFinding) for e in events]
    if not any(mine):
        return events
    try:
        found = forecast_for(state, level)
    except Exception as err:  # whatever fails in enrichment, the page goes out (issue 37)
        found = Refused(
            model=FORECAST,
            code=RefusalCode.INTERNAL_ERROR,
            reason=f"the forecast failed ({type(err).__name__}); the page is sent without it",
        )
    if found is None:
        return events
    if isinstance(found, Forecast):
        addition = f"Forecast: {found.sentence[0].upper()}{found.sentence[1:]}"
    else:
        addition = f"No forecast ({found.model}): {found.reason}."

    def told(e: Alert) -> Alert:
        advice = f"{e.recommendation} {addition}" if e.recommendation else addition
        return e.model_copy(update={"forecast": found, "recommendation": advice})

    return [told(e) if ours else e for e, ours in zip(events, mine, strict=True)]


class Correlated(NamedTuple):
    """A result read with the patient's state: the new state, its events, and the reading itself."""

    state: PatientState
    events: list[Alert]
    interpretation: Interpretation


def correlate_result(
    state: PatientState | None,
    result: LabResult,
    source: SourceRef,
    ruleset: RuleSet,
    *,
    rules: CorrelationRules = DEFAULT_RULES,
    override: TreatmentContext | None = None,
    read_at: datetime | None = None,
) -> Correlated | None:
    """(state, lab result) -> (new state, events, the reading); None when the result is not about
    infliximab.

    The patient's treatment record, if any, supplies the context the message leaves unsaid.
    With `read_at` (when the result was read), its follow-ups are opened, re-timed or ended.
    """
    given = TreatmentContext() if override is None else override
    try:
        treatment = state.treatment if state is not None else None
        record = treatment.context_at(result.collected_at) if treatment is not None else None
        found = interpret(result, ruleset, given, record)
        if found is None:
            return None
        done = Correlated(*correlate(state, found, source, ruleset, rules, read_at=read_at), found)
    except Exception as err:  # the patient's history never costs the page (issue 37)
        return _as_new_patient(
            state, result, source, ruleset, rules=rules, override=given, error=type(err).__name__
        )
    if read_at is None:
        return done
    try:
        after, resolved = follow_through(done.state, ruleset, read_at, rules)
    except Exception:  # a follow-up never costs the page either: the result's events go out
        return done
    return Correlated(after, [*done.events, *resolved], found)


HISTORY_NOT_APPLIED = "the patient's history could not be applied"


def _as_new_patient(
    state: PatientState | None,
    result: LabResult,
    source: SourceRef,
    ruleset: RuleSet,
    *,
    rules: CorrelationRules,
    override: TreatmentContext,
    error: str,
) -> Correlated | None:
    """The result read as the message alone says it (the stateless path), its events saying so,
    a review incident for a person to look at the history, and the result still remembered.

    A failure here too is a failure of the message alone: it is raised (a dead letter)."""
    found = interpret(result, ruleset, override, None)
    if found is None:
        return None
    fresh, events = correlate(None, found, source, ruleset, rules)
    note = f"Read as a new patient: {HISTORY_NOT_APPLIED} ({error})."
    events = [
        e.model_copy(update={"recommendation": f"{e.recommendation} {note}" if e.recommendation else note})
        for e in events
    ]
    key = incident_key(result, Category.REVIEW)
    review = event_for(
        found, source, action=Action.TRIGGER, incident=key, category=Category.REVIEW
    ).model_copy(
        update={
            "review_reason": ReviewReason.HISTORY_NOT_APPLIED,
            "summary": f"The infliximab or antibody result was read without the patient's history: "
            f"{HISTORY_NOT_APPLIED} ({error}). A person should check it.",
            "recommendation": None,
            "forecast": None,
        }
    )
    # The history stays as it was, with this result and its incidents added: a later result may
    # be read with it again once what failed is fixed. The review is a ticket, not tracked.
    after = fresh
    if state is not None:
        known = {r.key for r in fresh.results}
        opened = {i.key for i in fresh.incidents}
        after = state.model_copy(
            update={
                "results": (*(r for r in state.results if r.key not in known), *fresh.results),
                "incidents": (*(i for i in state.incidents if i.key not in opened), *fresh.incidents),
                "last_seen": max(
                    (t for t in (state.last_seen, fresh.last_seen) if t is not None), default=None
                ),
            }
        )
    return Correlated(after, [*events, review], found)


def record_treatment(
    state: PatientState | None, patient_id: str, update: TreatmentRecord | None, *, replace: bool
) -> PatientState | None:
    """The state after a treatment-context record: replaced, merged (a dose given), or deleted (None).

    A patient with no results and no record is no state at all.
    """
    state = state or PatientState(patient_id=patient_id)
    if update is None:
        treatment = None
    elif replace or state.treatment is None:
        treatment = update
    else:
        treatment = state.treatment.merged_with(update)
    new = state.model_copy(update={"treatment": treatment})
    return None if not new.results and not new.incidents and treatment is None else new
