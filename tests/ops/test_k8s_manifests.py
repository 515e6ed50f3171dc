"""The Kubernetes manifests as a cluster would take them: kustomize build, then kubeconform in
strict mode against the Kubernetes 1.34 schemas and the KEDA / Prometheus Operator CRDs."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_manifests_build_and_validate_strictly():
    if shutil.which("go") is None:
        pytest.fail("Go is needed to install kubeconform and kustomize", pytrace=False)
    done = subprocess.run(
        [sys.executable, str(REPO / "ops/k8s/validate.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in done.stdout
