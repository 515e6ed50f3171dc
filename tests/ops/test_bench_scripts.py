"""The in-process `make bench` checks still run (at a toy size): `make test` does not run the
bench, and one of them had stopped at its first line when the service it measures changed."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "ops" / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_cds_hooks_check_answers_signed_requests():
    out = run("cds_hooks_check.py", "--patients", "300", "--requests", "40", "--threads", "2")
    assert "with a signed JWT each, 40 requests" in out and "p99" in out


def test_the_forecast_check_estimates():
    out = run("forecast_check.py", "--patients", "10")
    assert "failed fits 0" in out
