"""A real FHIR R4 server for the tests (HAPI FHIR's JPA server, `ops/fhir-server`), and reading
back what it holds."""

from __future__ import annotations

import json
import select
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "ops" / "fhir-server" / "local-fhir-server"
START_TIMEOUT_S = 300  # ~20 s here; a first build on a fresh machine fetches ~390 MB of jars


@contextmanager
def fhir_server(log_path: Path) -> Iterator[str]:
    """The base URL of a FHIR server started for the caller and stopped after it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(SCRIPT), "run"], stdout=subprocess.PIPE, stderr=log)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
            line = proc.stdout.readline().decode() if ready else ""
            if not line.startswith("listening "):
                raise RuntimeError(f"the FHIR server did not start: {log_path.read_text()[-3000:]}")
            yield f"http://127.0.0.1:{int(line.split()[1])}/fhir"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return dict(json.loads(answer.read()))


def resources(base: str, resource_type: str) -> list[dict[str, Any]]:
    """Every resource of a type the server holds now (its current versions)."""
    found: list[dict[str, Any]] = []
    url: str | None = f"{base}/{resource_type}?_count=200"
    while url:
        page = get(url)
        found += [entry["resource"] for entry in page.get("entry", [])]
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return found


def versions(base: str, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """A resource's versions, oldest first."""
    history = get(f"{base}/{resource['resourceType']}/{resource['id']}/_history?_count=200")
    return sorted(
        (entry["resource"] for entry in history.get("entry", [])), key=lambda r: int(r["meta"]["versionId"])
    )
