"""The pure clinical core of tdm-alerts: lab results in, interpretations and alerts out.

No Kafka, no I/O, no clock, no environment: every decision here can be tested without a
broker, and every number it uses comes from a cited rule set.
"""

from interpretation.alerts import Alert, Category, Severity, SourceRef, alert_for
from interpretation.engine import interpret, interpret_all
from interpretation.findings import (
    Analyte,
    AntibodyFinding,
    AntibodyInterpretation,
    DecidedBy,
    DrugLevelFinding,
    DrugLevelInterpretation,
    Interpretation,
    Pattern,
)
from interpretation.lab_result import (
    Goal,
    LabResult,
    Monitoring,
    Phase,
    ResultStatus,
    Route,
    TreatmentContext,
)
from interpretation.recognition import recognise
from interpretation.ruleset import RuleSet, RuleSetError, default_ruleset, parse_ruleset

__all__ = [
    "Alert",
    "Analyte",
    "AntibodyFinding",
    "AntibodyInterpretation",
    "Category",
    "DecidedBy",
    "DrugLevelFinding",
    "DrugLevelInterpretation",
    "Goal",
    "Interpretation",
    "LabResult",
    "Monitoring",
    "Pattern",
    "Phase",
    "ResultStatus",
    "Route",
    "RuleSet",
    "RuleSetError",
    "Severity",
    "SourceRef",
    "TreatmentContext",
    "alert_for",
    "default_ruleset",
    "interpret",
    "interpret_all",
    "parse_ruleset",
    "recognise",
]
