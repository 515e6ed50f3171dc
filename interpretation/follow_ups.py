"""Follow-ups: what the service expects to arrive after a result, and what it says when it does not.

A low level for which the rule set asks for antibodies opens a follow-up: a deadline kept in the
patient's state (`FollowUp`). A pending antibody result re-times it, a released one ends it, and
so does the end of the low level's incident. When the deadline passes with nothing arrived, the
service's clock fires it once: a new incident (category `follow_up`) that tells the clinician what
is missing; it is resolved when the result arrives or the incident it follows ends.

Pure like the rest of the core: the clock is an argument (`read_at`, `now`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from interpretation.alerts import (
    Action,
    Alert,
    Category,
    FollowUpNotice,
    Severity,
    SourceRef,
)
from interpretation.findings import Analyte, DrugLevelFinding
from interpretation.lab_result import ResultStatus, TreatmentContext
from interpretation.patient_state import (
    CorrelationRules,
    FollowUp,
    OpenIncident,
    PatientState,
    RememberedResult,
)
from interpretation.ruleset import FollowUpKind, FollowUpRule, RuleSet

# A tick's events name no message: the clock is their cause.
TICK = SourceRef()


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def _hours(value: object) -> timedelta:
    return timedelta(hours=float(str(value)))


def follow_through(
    state: PatientState,
    ruleset: RuleSet,
    read_at: datetime,
    rules: CorrelationRules,
) -> tuple[PatientState, list[Alert]]:
    """After a result was folded into the state: open, re-time or end its follow-ups.

    `read_at` is when the service read the result (the wall clock, or a replay's own).
    Returns the new state and the resolve events of follow-ups that had fired and now end."""
    events: list[Alert] = []
    open_incidents = {i.key for i in state.incidents}
    kept: list[FollowUp] = []
    for f in state.follow_ups:
        ended = _why_ended(f, state, open_incidents)
        if ended is None:
            kept.append(f)
        elif f.fired_at is not None:
            events.append(_event(state.patient_id, f, ruleset, Action.RESOLVE, read_at, reason=ended))
    rule = ruleset.follow_up(FollowUpKind.ANTIBODIES_NOT_RESULTED)
    if rule is not None:
        followed = {f.follows for f in kept}
        kept.extend(
            _opened(rule, incident, level, read_at)
            for incident in state.incidents
            if incident.key not in followed and (level := _low_level_alone(state, incident)) is not None
        )
    kept = [_retimed(f, state, ruleset, read_at, rules) for f in kept]
    if tuple(kept) == state.follow_ups:
        return state, events
    return state.model_copy(update={"follow_ups": tuple(kept)}), events


def fire_due(state: PatientState, ruleset: RuleSet, now: datetime) -> tuple[PatientState, list[Alert]]:
    """The follow-ups due by `now`, each fired once: marked in the state returned with its event.

    A follow-up whose rule the rule set no longer has (turned off by the deployment) is dropped."""
    events: list[Alert] = []
    kept: list[FollowUp] = []
    for f in state.follow_ups:
        if f.fired_at is not None or f.due > now:
            kept.append(f)
            continue
        if _rule(ruleset, f) is None:
            continue
        fired = f.model_copy(update={"fired_at": now})
        kept.append(fired)
        events.append(_event(state.patient_id, fired, ruleset, Action.TRIGGER, now))
    if tuple(kept) == state.follow_ups:
        return state, []
    return state.model_copy(update={"follow_ups": tuple(kept)}), events


def _rule(ruleset: RuleSet, f: FollowUp) -> FollowUpRule | None:
    return next((r for r in ruleset.follow_ups if r.id == f.rule_id), None)


def _low_level_alone(state: PatientState, incident: OpenIncident) -> RememberedResult | None:
    """The released low level of a level incident with no antibody result beside it."""
    if incident.category is not Category.SUBTHERAPEUTIC_LEVEL or incident.pattern is not None:
        return None
    mine = [r for r in state.results if r.incident_key == incident.key]
    if any(r.analyte is Analyte.ANTI_INFLIXIMAB_ANTIBODY for r in mine):
        return None
    return next(
        (
            r
            for r in reversed(mine)
            if r.analyte is Analyte.INFLIXIMAB
            and r.status.may_page
            and r.finding is DrugLevelFinding.SUBTHERAPEUTIC
        ),
        None,
    )


def _opened(
    rule: FollowUpRule, incident: OpenIncident, level: RememberedResult, read_at: datetime
) -> FollowUp:
    """Due the rule's time after the draw, and never sooner than its least wait after it was read."""
    least = read_at + _hours(rule.least_wait_hours)
    due = (
        least if level.collected_at is None else max(level.collected_at + _hours(rule.due_after_hours), least)
    )
    return FollowUp(
        rule_id=rule.id,
        kind=rule.kind,
        follows=incident.key,
        key=_digest("follow-up", incident.key, rule.id),
        level=level,
        due=due,
    )


def _why_ended(f: FollowUp, state: PatientState, open_incidents: set[str]) -> str | None:
    if f.follows not in open_incidents:
        return "the incident it follows up has ended"
    released = any(
        r.incident_key == f.follows
        and r.analyte is Analyte.ANTI_INFLIXIMAB_ANTIBODY
        and (r.status.may_page or r.status.is_withdrawn)
        for r in state.results
    )
    return "the antibody result has arrived" if released else None


def _retimed(
    f: FollowUp, state: PatientState, ruleset: RuleSet, read_at: datetime, rules: CorrelationRules
) -> FollowUp:
    """A pending antibody result of the same draw moves the deadline to its least wait from now, once."""
    rule = _rule(ruleset, f)
    if f.fired_at is not None or rule is None:
        return f
    window = timedelta(hours=rules.pair_window_hours)
    drawn = f.level.collected_at
    pending = [
        r.key
        for r in state.results
        if r.analyte is Analyte.ANTI_INFLIXIMAB_ANTIBODY
        and r.status is ResultStatus.PRELIMINARY
        and r.key not in f.retimed_by
        and (drawn is None or r.collected_at is None or abs(r.collected_at - drawn) <= window)
    ]
    if not pending:
        return f
    due = max(f.due, read_at + _hours(rule.least_wait_hours))
    return f.model_copy(update={"due": due, "retimed_by": (*f.retimed_by, *pending)})


def _event(
    patient_id: str,
    f: FollowUp,
    ruleset: RuleSet,
    action: Action,
    at: datetime,
    *,
    reason: str | None = None,
) -> Alert:
    """The follow-up's own incident event, described by the level it follows."""
    rule = _rule(ruleset, f)
    level = f.level
    shown = (
        f"{level.comparator or ''}{level.value} {level.unit or ''}".rstrip()
        if level.value is not None
        else ""
    )
    said = f" of {shown}" if shown else ""
    if action is Action.RESOLVE:
        summary = f"Resolved: follow-up of a low infliximab trough{said}: {reason}."
    else:
        summary = (
            f"Follow-up: no anti-infliximab antibody result has arrived for the low infliximab trough{said}."
        )
    fired = f.fired_at or at
    return Alert(
        action=action,
        incident_key=f.key,
        event_id=_digest("event", f.key, action.value, f.due.isoformat()),
        resolve_reason=reason,
        # Something to do in working hours (check the test was run), routed to tickets like a
        # review; the low level itself has paged already.
        severity=Severity.LOW,
        category=Category.FOLLOW_UP,
        summary=summary,
        analyte=level.analyte.value,
        finding=level.finding,
        pattern=None,
        value=level.value,
        comparator=level.comparator,
        unit=level.unit,
        decided_by=None,
        target=None,
        context=TreatmentContext(),
        recommendation=rule.text if rule is not None and action is not Action.RESOLVE else None,
        citations=tuple(ruleset.citation(c) for c in rule.citations) if rule is not None else (),
        rule_id=f.rule_id,
        ruleset_version=ruleset.version,
        result_status=level.status,
        patient_id=patient_id,
        accession=level.accession,
        specimen_id=level.specimen_id,
        result_id=None,
        collected_at=level.collected_at,
        follow_up=FollowUpNotice(
            kind=f.kind,
            follows_incident=f.follows,
            due_at=f.due,
            fired_at=fired,
            late_seconds=max(int((fired - f.due).total_seconds()), 0),
        ),
        source=TICK,
    )
