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
from decimal import Decimal

from interpretation.alerts import (
    Acknowledged,
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
from interpretation.ruleset import Citation, FollowUpKind, FollowUpRule, RuleSet

# A tick's events name no message: the clock is their cause.
TICK = SourceRef()


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def _hours(value: Decimal) -> timedelta:
    return timedelta(hours=float(value))


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
            events.append(_event(state, f, ruleset, rules, Action.RESOLVE, at=read_at, reason=ended))
    followed = {(f.kind, f.follows) for f in kept}
    rule = ruleset.follow_up(FollowUpKind.ANTIBODIES_NOT_RESULTED)
    if rule is not None:
        kept.extend(
            _opened(rule, incident, level, read_at)
            for incident in state.incidents
            if (rule.kind, incident.key) not in followed
            and (level := _low_level_alone(state, incident)) is not None
        )
    if rules.escalate_after_minutes is not None:
        kept.extend(
            _escalation(rules.escalate_after_minutes, opened, incident, described)
            for incident in state.incidents
            # An incident opened before escalation existed has no time to count from: it stays as it was.
            if (opened := incident.opened_at) is not None
            and (FollowUpKind.NOT_ACKNOWLEDGED, incident.key) not in followed
            and incident.severity in _ESCALATED
            and incident.category in _PAGES
            and not incident.acknowledgements
            and (described := _latest_result(state, incident.key)) is not None
        )
    kept = [_retimed(f, state, ruleset, read_at, rules) for f in kept]
    return with_follow_ups(state, kept), events


# The pages that escalate when nobody acknowledges them: a review or a follow-up is a ticket.
_ESCALATED = (Severity.CRITICAL, Severity.HIGH)
_PAGES = (Category.SUBTHERAPEUTIC_LEVEL, Category.ANTI_DRUG_ANTIBODIES)
ESCALATION = "escalation"  # the rule id of a not-acknowledged follow-up (a setting, not a rule)


def with_follow_ups(state: PatientState, follow_ups: list[FollowUp]) -> PatientState:
    if tuple(follow_ups) == state.follow_ups:
        return state
    return state.model_copy(update={"follow_ups": tuple(follow_ups)})


def _latest_result(state: PatientState, incident: str) -> RememberedResult | None:
    return next((r for r in reversed(state.results) if r.incident_key == incident), None)


def _escalation(
    minutes: float, opened: datetime, incident: OpenIncident, described: RememberedResult
) -> FollowUp:
    return FollowUp(
        rule_id=ESCALATION,
        kind=FollowUpKind.NOT_ACKNOWLEDGED,
        follows=incident.key,
        key=_digest("follow-up", incident.key, ESCALATION),
        about=described.key,
        due=opened + timedelta(minutes=minutes),
    )


def fire_due(
    state: PatientState, ruleset: RuleSet, now: datetime, rules: CorrelationRules
) -> tuple[PatientState, list[Alert]]:
    """The follow-ups due by `now`, each fired once: marked in the state returned with its event.

    A follow-up the deployment turned off since (its rule gone from the rule set, escalation
    unset) is dropped."""
    events: list[Alert] = []
    kept: list[FollowUp] = []
    for f in state.follow_ups:
        if f.fired_at is not None or f.due > now:
            kept.append(f)
            continue
        if not _still_on(f, ruleset, rules):
            continue
        fired = f.model_copy(update={"fired_at": now})
        kept.append(fired)
        events.append(_event(state, fired, ruleset, rules, Action.TRIGGER, at=now))
    if tuple(kept) == state.follow_ups:
        return state, []
    return with_follow_ups(state, kept), events


def _still_on(f: FollowUp, ruleset: RuleSet, rules: CorrelationRules) -> bool:
    if f.kind is FollowUpKind.NOT_ACKNOWLEDGED:
        return rules.escalate_after_minutes is not None
    return _rule(ruleset, f) is not None


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
        about=level.key,
        due=due,
    )


def _why_ended(f: FollowUp, state: PatientState, open_incidents: set[str]) -> str | None:
    if f.follows not in open_incidents:
        return "the incident it follows up has ended"
    if f.kind is FollowUpKind.NOT_ACKNOWLEDGED:
        return None  # only an acknowledgement ends it (`acknowledgement.acknowledge`)
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
    if f.fired_at is not None or rule is None or f.kind is not FollowUpKind.ANTIBODIES_NOT_RESULTED:
        return f
    window = timedelta(hours=rules.pair_window_hours)
    drawn = described_by(state, f).collected_at
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
    state: PatientState,
    f: FollowUp,
    ruleset: RuleSet,
    rules: CorrelationRules,
    action: Action,
    *,
    at: datetime,
    reason: str | None = None,
) -> Alert:
    """The follow-up's own incident event, described by the result it follows."""
    fired = f.fired_at or at
    citations: tuple[Citation, ...]
    advice: str | None
    if f.kind is FollowUpKind.NOT_ACKNOWLEDGED:
        # Escalated: critical, so the notifier's critical routes (the escalation receiver) get it.
        severity, citations, advice = Severity.CRITICAL, (), _ESCALATION_ADVICE
        summary = (
            f"Not acknowledged: an infliximab page has had no acknowledgement for "
            f"{_duration(rules.escalate_after_minutes or 0)}."
        )
    else:
        rule = _rule(ruleset, f)
        level = described_by(state, f)
        shown = (
            f"{level.comparator or ''}{level.value} {level.unit or ''}".rstrip()
            if level.value is not None
            else ""
        )
        said = f" of {shown}" if shown else ""
        # Something to do in working hours (check the test was run), routed to tickets like a
        # review; the low level itself has paged already.
        severity = Severity.LOW
        citations = tuple(ruleset.citation(c) for c in rule.citations) if rule is not None else ()
        advice = rule.text if rule is not None else None
        summary = (
            f"Follow-up: no anti-infliximab antibody result has arrived for the low infliximab trough{said}."
        )
    if action is Action.RESOLVE:
        summary = f"Resolved: {WAITED_FOR[f.kind]}; {reason}."
        advice = None
    return describing(
        state.patient_id,
        described_by(state, f),
        ruleset,
        action=action,
        incident=f.key,
        event_id=_digest("event", f.key, action.value, f.due.isoformat()),
        category=Category.FOLLOW_UP,
        severity=severity,
        summary=summary,
        rule_id=f.rule_id,
        recommendation=advice,
        citations=citations,
        resolve_reason=reason,
        follow_up=FollowUpNotice(
            kind=f.kind,
            follows_incident=f.follows,
            due_at=f.due,
            fired_at=fired,
            late_seconds=max(int((fired - f.due).total_seconds()), 0),
        ),
    )


def described_by(state: PatientState, f: FollowUp) -> RememberedResult:
    """The result a follow-up's event describes; if it is gone (a resolve after its incident
    ended and the result aged out), the bare finding, so the event still goes out."""
    found = state.result(f.about)
    if found is not None:
        return found
    return RememberedResult(
        key=f.about,
        fingerprint="",
        analyte=Analyte.INFLIXIMAB,
        specimen_id=None,
        accession=None,
        collected_at=None,
        status=ResultStatus.FINAL,
        finding=DrugLevelFinding.SUBTHERAPEUTIC,
        value=None,
        comparator=None,
        unit=None,
    )


# What a resolved follow-up was, in its resolve event's summary.
WAITED_FOR = {
    FollowUpKind.ANTIBODIES_NOT_RESULTED: "the wait for the antibody result of a low infliximab trough",
    FollowUpKind.NOT_ACKNOWLEDGED: "the escalation of an unacknowledged infliximab page",
}


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:g} seconds"
    return f"{minutes:g} minutes" if minutes < 120 else f"{minutes / 60:g} hours"


_ESCALATION_ADVICE = (
    "Acknowledge the page with the decision taken (tdm-alerts ack, or the paging system), or hand it on."
)


def describing(
    patient_id: str,
    result: RememberedResult,
    ruleset: RuleSet,
    *,
    action: Action,
    incident: str,
    event_id: str,
    category: Category,
    severity: Severity,
    summary: str,
    rule_id: str,
    recommendation: str | None = None,
    citations: tuple[Citation, ...] = (),
    resolve_reason: str | None = None,
    follow_up: FollowUpNotice | None = None,
    acknowledgements: tuple[Acknowledged, ...] = (),
) -> Alert:
    """An event the clock or an acknowledgement publishes, described by a remembered result
    (no message to read it from): what was measured, where, and the event's own fields."""
    return Alert(
        action=action,
        incident_key=incident,
        event_id=event_id,
        resolve_reason=resolve_reason,
        severity=severity,
        category=category,
        summary=summary,
        analyte=result.analyte.value,
        finding=result.finding,
        pattern=None,
        value=result.value,
        comparator=result.comparator,
        unit=result.unit,
        decided_by=None,
        target=None,
        context=TreatmentContext(),
        recommendation=recommendation,
        citations=citations,
        rule_id=rule_id,
        ruleset_version=ruleset.version,
        result_status=result.status,
        patient_id=patient_id,
        accession=result.accession,
        specimen_id=result.specimen_id,
        result_id=None,
        collected_at=result.collected_at,
        follow_up=follow_up,
        acknowledgements=acknowledgements,
        source=TICK,
    )
