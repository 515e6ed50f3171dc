"""The forecast a level's alert carries: the patient's levels, infusions and covariates gathered
from their state, handed to `interpretation.pk.forecast`.

Only what the state holds is used, so a level, the antibody result and the dose history give the
same forecast whatever order they arrived in, once all are in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from interpretation.findings import Analyte, AntibodyFinding, DrugLevelFinding, DrugLevelInterpretation, Titre
from interpretation.lab_result import Phase, Route, as_utc
from interpretation.patient_state import PatientState
from interpretation.pk.forecast import Antibodies, Forecast, Level, Patient, RefusalCode, Refused, forecast
from interpretation.pk.kinetics import Dose, fasanmade_2009
from interpretation.quantities import Comparator
from interpretation.treatment import ContextSource, TreatmentRecord

_BELOW = (Comparator.LT, Comparator.LE)
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def forecast_for(state: PatientState, level: DrugLevelInterpretation) -> Forecast | Refused | None:
    """The next-trough forecast for `level` (already in `state`), or None where there is no lower
    target to reach (nothing to forecast against); withheld where it would mislead."""
    target = level.target.low if level.target is not None else None
    if target is None or level.value is None:
        return None
    treatment = TreatmentRecord() if state.treatment is None else state.treatment
    model = fasanmade_2009()
    if (why := _withheld(state, level, treatment)) is not None:
        return Refused(model=model.id, code=RefusalCode.WITHHELD, reason=why)
    unknown = next((d for d in treatment.doses if d.amount is None), None)
    if unknown is not None:
        return Refused(
            model=model.id,
            reason=f"the dose of the infusion of {as_utc(unknown.at).date()} is not known (no amount, "
            "or a unit that is not mg, g or mg/kg): the projection would understate the drug given",
        )
    weight = treatment.weight_kg
    doses = [Dose(as_utc(d.at), float(mg)) for d in treatment.doses if (mg := d.mg(weight)) is not None]
    # Final or corrected levels the engine could read: not a preliminary one (it may change),
    # nor one it found implausible or could not judge.
    levels = [
        Level(as_utc(r.collected_at), float(r.value), censored=r.comparator in _BELOW)
        for r in state.results
        if r.analyte is Analyte.INFLIXIMAB
        and r.value is not None
        and r.collected_at is not None
        and r.status.may_page
        and r.finding is not DrugLevelFinding.UNINTERPRETABLE
    ]
    route = level.context.route or treatment.route
    patient = Patient(
        levels=levels,
        doses=doses,
        weight_kg=float(weight) if weight is not None else None,
        albumin_g_per_dl=float(treatment.albumin_g_per_dl)
        if treatment.albumin_g_per_dl is not None
        else None,
        female=None if treatment.sex is None else treatment.sex == "female",
        antibodies=_antibodies(state),
        route=route.value if isinstance(route, Route) else None,
        age_years=_age(treatment, level.result.collected_at),
        indication=_indication(level, treatment),
    )
    return forecast(model, patient, float(target))


# A level drawn this soon after an infusion began is not a trough: during the infusion or its
# distribution phase the concentration changes by the hour, and the recorded start of the
# infusion is too coarse to fit it. A documented default of this service.
SOON_AFTER_INFUSION = timedelta(hours=24)


def _withheld(state: PatientState, level: DrugLevelInterpretation, treatment: TreatmentRecord) -> str | None:
    """Why a forecast would mislead for this level, if it would (issue 37)."""
    if level.context.phase is Phase.INDUCTION:
        return (
            "induction: the doses are the induction schedule (weeks 0, 2 and 6), not a regimen to "
            "project; the forecast starts with maintenance"
        )
    drawn = level.result.collected_at
    last = treatment.last_dose_before(as_utc(drawn)) if drawn is not None else None
    if drawn is not None and last is not None and as_utc(drawn) - last < SOON_AFTER_INFUSION:
        hours = (as_utc(drawn) - last).total_seconds() / 3600
        return f"drawn {hours:.0f} h after an infusion began: not a trough, and too early to fit"
    low = level.finding is DrugLevelFinding.SUBTHERAPEUTIC
    if low and _antibodies(state) in (Antibodies.POSITIVE, Antibodies.HIGH_TITRE):
        return (
            "antibodies detected with a low level: the failure may be immunogenic, and a higher "
            "dose projected as if the antibodies were not there would mislead"
        )
    return None


def _indication(level: DrugLevelInterpretation, treatment: TreatmentRecord) -> str | None:
    """The disease as the message or the record says it; the rule set's default is no knowledge."""
    if level.context.indication is not None and level.context_source.get("indication") not in (
        None,
        ContextSource.DEFAULT,
    ):
        return level.context.indication.value
    return treatment.indication


def _antibodies(state: PatientState) -> Antibodies | None:
    """The latest readable antibody result; None when none is known."""
    found = [
        r
        for r in state.results
        if r.analyte is not Analyte.INFLIXIMAB
        and r.finding in (AntibodyFinding.ANTIBODIES_DETECTED, AntibodyFinding.ANTIBODIES_NOT_DETECTED)
    ]
    if not found:
        return None
    latest = max(found, key=lambda r: as_utc(r.collected_at) if r.collected_at else _EARLIEST)
    if latest.finding is AntibodyFinding.ANTIBODIES_NOT_DETECTED:
        return Antibodies.NEGATIVE
    # Only an assay that defines a high titre can call them high; ungraded ones count as positive.
    return Antibodies.HIGH_TITRE if latest.titre is Titre.HIGH else Antibodies.POSITIVE


def _age(treatment: TreatmentRecord, at: datetime | None) -> int | None:
    if treatment.birth_date is None or at is None:
        return None
    drawn, born = as_utc(at).date(), treatment.birth_date
    return drawn.year - born.year - ((drawn.month, drawn.day) < (born.month, born.day))
