"""What users install is the wheel: build it, install it outside the checkout, and run it there.

An editable install reads files straight from the source tree, so it hides anything the wheel
leaves out (the rule set once was). These tests install from `requirements.lock` plus the built
wheel into a fresh virtualenv and run the console script from a folder that is not the repo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _checked(*args: str | Path, cwd: Path) -> str:
    done = _run(*args, cwd=cwd)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy so the checkout gets no build/ or egg-info of ours.
    source = tmp_path_factory.mktemp("source") / "tdm-alerts"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".cache", ".git", "*.egg-info", "build", "dist", "__pycache__"
        ),
    )
    out = tmp_path_factory.mktemp("dist")
    _checked(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, source, cwd=out
    )
    (built,) = out.glob("tdm_alerts-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the locked dependencies and the wheel; returns its bin/."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    _checked(sys.executable, "-m", "venv", venv, cwd=venv.parent)
    pip = venv / "bin" / "pip"
    _checked(pip, "install", "--quiet", "--require-hashes", "-r", REPO / "requirements.lock", cwd=venv.parent)
    _checked(pip, "install", "--quiet", "--no-deps", wheel, cwd=venv.parent)
    return venv / "bin"


def test_wheel_ships_every_rule_set_and_the_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for ruleset in (REPO / "interpretation" / "rulesets").glob("*.json"):
        assert f"interpretation/rulesets/{ruleset.name}" in names
    assert "interpretation/py.typed" in names
    assert "consumer/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = _checked(
        installed / "python",
        "-c",
        "import interpretation; print(interpretation.__file__)",
        cwd=tmp_path,
    )
    assert str(installed.parent) in where
    assert str(REPO) not in where


def test_rules_show_runs_from_the_installed_package(installed: Path, tmp_path: Path) -> None:
    shown = _checked(installed / "tdm-alerts", "rules", "show", cwd=tmp_path)
    packaged = json.loads((REPO / "interpretation" / "rulesets" / "default.json").read_text())
    assert f"Rule set {packaged['version']}" in shown
    for target in packaged["drug_level_targets"]:
        assert target["id"] in shown


def test_installed_alert_schema_is_the_published_one(installed: Path, tmp_path: Path) -> None:
    printed = json.loads(_checked(installed / "tdm-alerts", "alert-schema", cwd=tmp_path))
    assert printed == json.loads((REPO / "docs" / "alert.schema.json").read_text())


def test_interpret_from_the_installed_package_matches_the_checkout(installed: Path, tmp_path: Path) -> None:
    sample = tmp_path / "feed.jsonl"
    shutil.copy(DATA / "sample-feed.jsonl", sample)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDM_")}
    from_wheel = _run(installed / "tdm-alerts", "interpret", sample, cwd=tmp_path, env=env)
    from_checkout = _run(sys.executable, "-m", "consumer", "interpret", sample, cwd=REPO, env=env)
    assert from_wheel.stdout == from_checkout.stdout
    assert from_wheel.returncode == from_checkout.returncode
    lines = [json.loads(line) for line in from_wheel.stdout.splitlines()]
    assert any(line["alert"] for line in lines)


def test_module_entry_point_matches_console_script(installed: Path, tmp_path: Path) -> None:
    assert _checked(installed / "python", "-m", "consumer", "--version", cwd=tmp_path) == _checked(
        installed / "tdm-alerts", "--version", cwd=tmp_path
    )


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return _run("docker", "info", cwd=REPO).returncode == 0


@pytest.mark.skipif(not _docker_answers(), reason="no Docker engine answers here")
def test_image_builds_and_starts(tmp_path: Path) -> None:
    tag = "tdm-alerts:wheel-test"
    _checked("docker", "build", "--quiet", "-t", tag, REPO, cwd=REPO)
    shown = _checked("docker", "run", "--rm", tag, "rules", "show", cwd=tmp_path)
    assert "Rule set " in shown
