"""deploy/k8s as `kubectl apply -k` sees it: rendered by the real kustomize (built from the Go
module proxy by `deploy/local/stack.sh kustomize-bin`, cached) and every built-in object
validated against the Kubernetes JSON schemas (strict: an unknown field is an error) that
the kubernetes-validate package ships, for the oldest and the newest Kubernetes we claim.

No cluster is needed; KEDA's and the Prometheus Operator's objects (custom resources) have no
schema there and are checked by tests/unit/test_deploy_manifests.py instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# Oldest still supported upstream when this was written, and the newest the package has.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
# Custom resources: their CRDs come with KEDA and the Prometheus Operator, not Kubernetes.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
# Files kept out of kustomization.yaml on purpose (see its header), validated on their own.
OUTSIDE_KUSTOMIZATION = ("secret.example.yaml", "servicemonitor.yaml")


@pytest.fixture(scope="module")
def kustomize() -> Path:
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "stack.sh"), "kustomize-bin"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip().splitlines()[-1])


def build(kustomize: Path, folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(kustomize), "build", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kustomize: Path) -> list[dict[str, Any]]:
    return build(kustomize, K8S)


def _validate(doc: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {exc}")


def test_every_built_in_object_is_valid(rendered: list[dict[str, Any]]) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert {"ConfigMap", "Deployment", "PodDisruptionBudget", "Service"} <= kinds
    for doc in rendered:
        if doc["kind"] not in CUSTOM_KINDS:
            _validate(doc)


def test_files_outside_the_kustomization_are_valid_too() -> None:
    for name in OUTSIDE_KUSTOMIZATION:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc and doc["kind"] not in CUSTOM_KINDS:
                _validate(doc)


def test_a_schema_violation_is_caught() -> None:
    # The check can fail: a typo'd field under a strict schema is refused.
    doc = yaml.safe_load((K8S / "pdb.yaml").read_text())
    doc["spec"]["maxUnavailible"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_no_replicas_where_keda_scales(rendered: list[dict[str, Any]]) -> None:
    # Every `kubectl apply -k` would set the count back to it, under KEDA's feet.
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in rendered if doc["kind"] == "ScaledObject"
    }
    assert scaled, "no ScaledObject rendered"
    for doc in rendered:
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] in scaled:
            assert "replicas" not in doc["spec"], doc["metadata"]["name"]


def test_an_overlay_picks_the_namespace(kustomize: Path, tmp_path: Path) -> None:
    # As the README says: namespace-agnostic, chosen by -n or an overlay.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: ocr\nresources:\n  - {os.path.relpath(K8S, overlay)}\n"
    )
    docs = build(kustomize, overlay)
    assert docs and all(doc["metadata"]["namespace"] == "ocr" for doc in docs)
    assert all(
        doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ocr-stream" for doc in docs
    )
