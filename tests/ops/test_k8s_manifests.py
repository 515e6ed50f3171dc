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


def test_the_notifier_runs_as_its_own_workload_with_its_secrets_as_files():
    import yaml

    if shutil.which("go") is None:
        pytest.fail("Go is needed to install kustomize", pytrace=False)
    sys.path.insert(0, str(REPO / "ops/k8s"))
    from validate import tool

    built = subprocess.run(
        [str(tool("kustomize")), "build", str(REPO / "ops/k8s")], capture_output=True, text=True, check=True
    )
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout)}
    pod = docs["Deployment", "tdm-alerts-notify"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["notify"]
    assert {"PodDisruptionBudget", "PodMonitor"} <= {
        kind for kind, name in docs if name == "tdm-alerts-notify"
    }
    # Settings from the two ConfigMaps, each a real setting; secrets only as mounted files.
    from consumer.settings import Settings

    names = {f"TDM_{field.upper()}" for field in Settings.model_fields}
    config = {**docs["ConfigMap", "tdm-alerts"]["data"], **docs["ConfigMap", "tdm-alerts-notify"]["data"]}
    assert set(config) <= names, set(config) - names
    assert all("valueFrom" not in e or "fieldRef" in e["valueFrom"] for e in container["env"])
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
    for key, path in config.items():
        if key.endswith("_FILE") or key == "TDM_SSL_CAFILE":
            assert any(path.startswith(m + "/") and mounted[m] in secrets for m in mounted), key
    # The commented-out receiver secrets point at the notify Secret's mount.
    text = (REPO / "ops/k8s/notify-configmap.yaml").read_text()
    assert "/etc/tdm-alerts/notify/pagerduty-routing-key" in text and "/etc/tdm-alerts/notify" in mounted
