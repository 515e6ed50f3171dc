"""`tdm-alerts rules check | show`, and the rule set every verb reads (`load_ruleset`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from consumer.cli.arguments import Commands
from interpretation import RuleSet, RuleSetError, default_ruleset, parse_ruleset
from interpretation.ruleset import PACKAGED_RULESETS, packaged_ruleset


def load_ruleset(path: Path | None) -> RuleSet:
    """The rule set in `path`, else in $TDM_RULESET, else the packaged default.

    A bare name of a packaged rule set (`reactive`) selects that one.
    """
    if path is None and (from_env := os.environ.get("TDM_RULESET")):
        path = Path(from_env)
    if path is None:
        return default_ruleset()
    if str(path) in PACKAGED_RULESETS:
        return packaged_ruleset(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RuleSetError(f"cannot read rule file {path}: {err.strerror}") from err
    return parse_ruleset(text, str(path))


def cmd_rules_check(args: argparse.Namespace) -> int:
    ruleset = load_ruleset(args.file)  # raises RuleSetError with every problem listed
    print(
        f"{args.file}: valid rule set {ruleset.version} ({len(ruleset.drug_level_targets)} targets, "
        f"{len(ruleset.antibody_assays)} antibody assays, {len(ruleset.citations)} citations)"
    )
    return 0


def cmd_rules_show(args: argparse.Namespace) -> int:
    ruleset = load_ruleset(args.ruleset)
    print(f"Rule set {ruleset.version}: {ruleset.description}")
    print(f"Context when the message says nothing: {ruleset.defaults.describe_set_fields()}\n")
    rows = [("#", "rule", "applies to", "target", "citation")]
    for n, t in enumerate(ruleset.drug_level_targets, start=1):
        rows.append((str(n), t.id, t.when.describe(), t.describe_range(), t.citation))
    for a in ruleset.antibody_assays:
        rows.append(
            (
                "ATI",
                a.id,
                f"codes {', '.join(a.codes)}",
                f"positive >= {a.positive_at_or_above} {a.unit}",
                a.citation,
            )
        )
    ceiling = ruleset.plausibility
    rows.append(
        (
            "-",
            "plausibility",
            "any drug level",
            f"uninterpretable > {ceiling.max_drug_level_ug_per_ml} ug/mL",
            ceiling.citation,
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    loq = ruleset.assay_limits
    rows_note = f"uninterpretable > {ceiling.max_drug_level_ug_per_ml} ug/mL"
    print("\nDrug-level targets are tried in order; the first whose context matches applies.")
    print(
        "With no target for the context, a level below the lowest target that could apply is low;\n"
        "a level reported as text ('Undetectable', '<LOQ') reads as "
        f"< {loq.limit_of_quantitation_ug_per_ml} ug/mL [{loq.citation}]. "
        f"Implausible: {rows_note} [{ceiling.citation}]."
    )
    print(
        "Antibodies: every piece of evidence is read (a named lab's assay cut-off, the lab's reference\n"
        "interval, its abnormal flag, a configured cut-off, its words); when they disagree: detected.\n"
    )
    print("Citations:")
    for c in ruleset.citations:
        print(f"  [{c.id}] {c.reference()}\n      Used for: {c.claim}")
    return 0


def add_rules(commands: Commands) -> None:
    rules = commands.add_parser("rules", help="check or show interpretation rule sets")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_commands.add_parser("check", help="validate a rule file and explain its errors")
    check.add_argument("file", type=Path, help="the rule set JSON file to validate")
    check.set_defaults(handler=cmd_rules_check)
    show = rules_commands.add_parser("show", help="print the active rules with their citations")
    show.add_argument(
        "--ruleset", type=Path, default=None, help="rule file (default: $TDM_RULESET or packaged)"
    )
    show.set_defaults(handler=cmd_rules_show)
