"""What the engine concludes about a result: findings, patterns and the interpretation record."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from interpretation.lab_result import Frozen, LabResult, TreatmentContext
from interpretation.quantities import Comparator
from interpretation.ruleset import Citation, DrugLevelTarget
from interpretation.treatment import ContextSource

NO_RULE = "none"  # rule_id of an interpretation no rule could decide


class Analyte(StrEnum):
    INFLIXIMAB = "infliximab"
    ANTI_INFLIXIMAB_ANTIBODY = "anti_infliximab_antibody"


class DrugLevelFinding(StrEnum):
    """Where a level lies against its target.

    Above the range is not "supratherapeutic": no toxicity is linked to high infliximab levels.
    """

    SUBTHERAPEUTIC = "subtherapeutic"
    THERAPEUTIC = "therapeutic"
    ABOVE_TARGET = "above_target"
    UNINTERPRETABLE = "uninterpretable"


class AntibodyFinding(StrEnum):
    ANTIBODIES_DETECTED = "antibodies_detected"
    ANTIBODIES_NOT_DETECTED = "antibodies_not_detected"
    UNINTERPRETABLE = "uninterpretable"


class Titre(StrEnum):
    """Detected antibodies graded against the assay's cited high-titre level, where it has one."""

    LOW = "low"
    HIGH = "high"


class DecidedBy(StrEnum):
    """Which evidence settled antibody positivity, in the order the engine consults them."""

    ASSAY_CUTOFF = "assay_cutoff"
    REFERENCE_RANGE = "reference_range"
    ABNORMAL_FLAG = "abnormal_flag"
    QUALITATIVE_TEXT = "qualitative_text"


class Pattern(StrEnum):
    """A drug level and an antibody result on the same specimen, read together."""

    IMMUNOGENIC_FAILURE = "immunogenic_failure"
    # A low level with antibodies the assay calls low-titre: may be transient or overcome by
    # dose intensification; with no graded titre, antibodies with a low level are the failure.
    LOW_LEVEL_WITH_LOW_TITRE_ANTIBODIES = "low_level_with_low_titre_antibodies"
    NON_IMMUNE_LOW_LEVEL = "non_immune_low_level"
    ANTIBODIES_WITH_ADEQUATE_LEVEL = "antibodies_with_adequate_level"
    ADEQUATE_WITHOUT_ANTIBODIES = "adequate_without_antibodies"


class _InterpretationBase(Frozen):
    result: LabResult
    context: TreatmentContext
    # Where each context field came from: the message, the patient's record or the default.
    context_source: dict[str, ContextSource] = Field(default_factory=dict)
    alert: bool
    reason: str
    value: Decimal | None = None
    comparator: Comparator | None = None
    unit: str | None = None
    rule_id: str
    ruleset_version: str
    recommendation: str | None = None
    citations: tuple[Citation, ...] = ()
    pattern: Pattern | None = None


class DrugLevelInterpretation(_InterpretationBase):
    """An infliximab trough read against the target for its context; `value` is in ug/mL."""

    analyte: Literal[Analyte.INFLIXIMAB] = Analyte.INFLIXIMAB
    finding: DrugLevelFinding
    target: DrugLevelTarget | None = None


class AntibodyInterpretation(_InterpretationBase):
    """An anti-infliximab antibody result; `unit` is the assay's own (units are not convertible)."""

    analyte: Literal[Analyte.ANTI_INFLIXIMAB_ANTIBODY] = Analyte.ANTI_INFLIXIMAB_ANTIBODY
    finding: AntibodyFinding
    decided_by: DecidedBy | None = None
    titre: Titre | None = None  # detected antibodies only, where the assay defines a high titre


Interpretation = Annotated[DrugLevelInterpretation | AntibodyInterpretation, Field(discriminator="analyte")]
