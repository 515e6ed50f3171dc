"""The alerting rules load in Prometheus and fire (and stay quiet) exactly where intended."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

RULES = REPO / "ops" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package", pytrace=False)
    return path


def test_rules_are_valid(promtool):
    done = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass(promtool):
    done = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_links_its_runbook_section_absolutely():
    """runbook_url is the configured base (Prometheus' external label) plus the alert's section."""
    import yaml

    base = yaml.safe_load((RULES / "prometheus.yml").read_text())["global"]["external_labels"]["runbook_base"]
    assert base.startswith("https://")
    runbook = (REPO / "ops" / "runbook.md").read_text()
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    for rule in alerts:
        assert f"## {rule['alert']}\n" in runbook
        section = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == "{{ $externalLabels.runbook_base }}#" + section
        assert {"summary", "description"} <= set(rule["annotations"])
