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


def test_every_alert_has_a_runbook_section():
    import yaml

    runbook = (REPO / "ops" / "runbook.md").read_text()
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert f"## {rule['alert']}" in runbook
        assert rule["annotations"]["runbook_url"] == f"ops/runbook.md#{rule['alert'].lower()}"
        assert {"summary", "description"} <= set(rule["annotations"])
