"""Runs the atheris harness for a bounded number of inputs, seeded with the fixture files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has no wheel for this platform")

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("TDM_FUZZ_RUNS", "10000"))


@pytest.mark.slow
def test_decoders_survive_coverage_guided_fuzzing(tmp_path):
    corpus = tmp_path / "corpus"  # new inputs are written here, never into the fixtures
    corpus.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/fuzz/fuzz_decoders.py"),
            f"-runs={RUNS}",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
            str(ROOT / "tests/data/hl7"),
            str(ROOT / "tests/data/fhir"),
        ],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {RUNS} runs" in done.stderr
