"""Validate ops/k8s as a cluster would: `kustomize build`, then kubeconform in strict mode against
the Kubernetes schemas (from the PyPI package kubernetes-validate) and the CRDs it uses (KEDA's
ScaledObject and TriggerAuthentication, the Prometheus Operator's PodMonitor), taken from those
projects' own releases through the Go module proxy.

    python ops/k8s/validate.py          # prints kubeconform's summary; exit 1 on any error

Installs what it needs on first use (Go is on the machine): the two tools into .cache/tools, the
CRD schemas into .cache/k8s-schemas. Nothing is fetched from outside the package registries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".cache" / "tools" / "bin"
SCHEMAS = REPO / ".cache" / "k8s-schemas"
KUBERNETES_VERSION = "1.34.0"
GO_TOOLS = {
    "kubeconform": "github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0",
    "kustomize": "sigs.k8s.io/kustomize/kustomize/v5@v5.7.1",
}
# module@version -> the CRD files in it that our manifests use
CRD_SOURCES = {
    "github.com/kedacore/keda/v2@v2.18.0": [
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ],
    "github.com/prometheus-operator/prometheus-operator@v0.85.0": [
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    ],
}


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "install", GO_TOOLS[name]], check=True, env={**os.environ, "GOBIN": str(TOOLS)})
    return path


def kubernetes_schemas(kinds: set[tuple[str, str]]) -> Path:
    """Standalone schemas for the (kind, apiVersion)s used, from the kubernetes-validate package.

    Its files point at a shared `/api/_definitions.json`, which kubeconform would look for at the
    root of the file system: each schema we need is written with those definitions inlined.
    """
    import kubernetes_validate  # the test extra installs it

    version = f"v{KUBERNETES_VERSION}"
    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"{version}-local-strict"
    target = SCHEMAS / "kubernetes" / version
    target.mkdir(parents=True, exist_ok=True)
    definitions: dict[str, object] | None = None
    for kind, api_version in kinds:
        group, _, ver = api_version.rpartition("/")
        name = f"{kind.lower()}-{group.split('.')[0] + '-' if group else ''}{ver}.json"
        if (target / name).exists() or not (source / name).exists():
            continue  # done before, or a CRD (kubeconform reports a kind it finds nowhere)
        if definitions is None:
            text = (source / "_definitions.json").read_text().replace("/api/_definitions.json#", "#")
            definitions = json.loads(text)["$defs"]
        schema = json.loads((source / name).read_text().replace("/api/_definitions.json#", "#"))
        schema["$defs"] = definitions
        (target / name).write_text(json.dumps(schema))
    return target


def strict(schema: object) -> object:
    """openAPIV3Schema -> JSON schema as kubeconform reads it: unknown fields are errors."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> Path:
    done = SCHEMAS / ".done"
    if done.exists() and done.read_text() == json.dumps(CRD_SOURCES):
        return SCHEMAS
    for module, files in CRD_SOURCES.items():
        found = subprocess.run(
            ["go", "mod", "download", "-json", module], check=True, capture_output=True, text=True
        )
        root = Path(json.loads(found.stdout)["Dir"])
        for name in files:
            crd = yaml.safe_load((root / name).read_text())
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
            for version in crd["spec"]["versions"]:
                target = SCHEMAS / "crds" / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(strict(version["schema"]["openAPIV3Schema"])))
    done.write_text(json.dumps(CRD_SOURCES))
    return SCHEMAS


def validate(directory: Path) -> subprocess.CompletedProcess[str]:
    built = subprocess.run(
        [str(tool("kustomize")), "build", str(directory)], check=False, capture_output=True, text=True
    )
    if built.returncode != 0:
        return subprocess.CompletedProcess(built.args, built.returncode, "kustomize build: ", built.stderr)
    kinds = {(d["kind"], d["apiVersion"]) for d in yaml.safe_load_all(built.stdout) if d}
    return subprocess.run(
        [
            str(tool("kubeconform")),
            "-strict",
            "-summary",
            "-output",
            "text",
            "-kubernetes-version",
            KUBERNETES_VERSION,
            "-schema-location",
            str(kubernetes_schemas(kinds)) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
            "-schema-location",
            str(crd_schemas()) + "/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
            "-",
        ],
        input=built.stdout,
        capture_output=True,
        text=True,
        check=False,
    )


def main() -> int:
    if shutil.which("go") is None:
        print("validate: Go is needed to install kubeconform and kustomize", file=sys.stderr)
        return 2
    done = validate(REPO / "ops" / "k8s")
    print(done.stdout + done.stderr, end="")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
