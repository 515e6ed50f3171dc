"""The forecast a level's alert carries: the patient's levels, infusions and covariates gathered
from their state, handed to `interpretation.forecast`.

Only what the state holds is used, so a level, the antibody result and the dose history give the
same forecast whatever order they arrived in, once all are in.
"""

from __future__ import annotations

from datetime import UTC, datetime

from interpretation.findings import Analyte, AntibodyFinding, DrugLevelFinding, DrugLevelInterpretation, Titre
from interpretation.forecast import Antibodies, Forecast, Level, Patient, Refused, forecast
from interpretation.lab_result import Route, as_utc
from interpretation.patient_state import PatientState
from interpretation.pharmacokinetics import Dose, fasanmade_2009
from interpretation.quantities import Comparator
from interpretation.treatment import ContextSource, TreatmentRecord

_BELOW = (Comparator.LT, Comparator.LE)
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def forecast_for(state: PatientState, level: DrugLevelInterpretation) -> Forecast | Refused | None:
    """The next-trough forecast for `level` (already in `state`), or None where there is no lower
    target to reach (nothing to forecast against)."""
    target = level.target.low if level.target is not None else None
    if target is None or level.value is None:
        return None
    treatment = state.treatment or TreatmentRecord()
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
    return forecast(fasanmade_2009(), patient, float(target))


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
