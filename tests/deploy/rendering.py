"""Rendering deploy/k8s for the tests: kustomize with kubectl, read values and budgets, and find
the worker in the rendered objects. Needs `kubectl` (its built-in kustomize), no cluster."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("keda", "knative", "always-on")


def kubectl() -> str:
    path = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    if path is None:
        pytest.fail("kubectl not found: the deploy tests render the manifests with `kubectl kustomize`")
    return path


def kustomize(directory: Path) -> list[dict]:
    """Renders one kustomization and returns its objects, failing the test with kubectl's error."""
    run = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{run.stderr}")
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def values_of(overlay: str, root: Path = K8S) -> dict:
    """The `spec` of an overlay's values.yaml: the operator's knobs."""
    return load_yaml(root / "overlays" / overlay / "values.yaml")["spec"]


def group_of(obj: dict) -> str:
    """The object's API group ("" for the core group)."""
    return obj["apiVersion"].rpartition("/")[0]


def find(objects: list[dict], kind: str, api_group: str | None = None) -> list[dict]:
    """Objects of a kind; api_group "" is the core group, None any group."""
    return [obj for obj in objects
            if obj["kind"] == kind and (api_group is None or group_of(obj) == api_group)]


def one(objects: list[dict], kind: str, api_group: str | None = None) -> dict:
    found = find(objects, kind, api_group)
    assert len(found) == 1, f"expected one {kind} ({api_group}), found {len(found)}"
    return found[0]


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod template) of every workload: the Deployment, or the Knative Service's revision."""
    out = []
    for obj in objects:
        if obj["kind"] == "Deployment" or (obj["kind"] == "Service" and group_of(obj) == "serving.knative.dev"):
            out.append((f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]))
    return out


def worker_container(template: dict) -> dict:
    containers = {c["name"]: c for c in template["spec"]["containers"]}
    assert "worker" in containers, "the pod template has no container named worker"
    return containers["worker"]


def env_of(container: dict) -> dict:
    """Literal env values by name (valueFrom entries map to their source dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def seconds(duration: str) -> float:
    """A Go-style duration ("900s", "15m", "1h30m") or plain number of seconds."""
    text = str(duration).strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            raise ValueError(f"not a duration: {duration!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        raise ValueError(f"duration without a unit: {duration!r}")
    return total
