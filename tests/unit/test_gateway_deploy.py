"""ocr-gateway's deployment files agree with its code: compose, Kubernetes, Grafana, docs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import Settings
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.settings import ENV_PREFIX, GatewaySettings, markdown_table

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"


def gateway_settings(env: dict[str, Any]) -> tuple[Settings, GatewaySettings]:
    own = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in env.items() if name.startswith(ENV_PREFIX)
    }
    shared = {
        name.removeprefix("OCR_").lower(): value
        for name, value in env.items()
        if name.startswith("OCR_") and not name.startswith(ENV_PREFIX)
    }
    unknown = set(shared) - set(Settings.model_fields)
    assert not unknown, sorted(unknown)
    own.pop("api_keys_file", None)  # a mounted file, absent here
    return Settings(**shared), GatewaySettings(**own)


def test_compose_gateway() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    assert gateway["entrypoint"] == ["ocr-gateway"]
    # Compose interpolates ${PWD} (the folder `docker compose` runs in).
    env = {k: str(v).replace("${PWD}", "/srv/host") for k, v in gateway["environment"].items()}
    core, own = gateway_settings(env)
    assert f"127.0.0.1:{own.port}:{own.port}" in gateway["ports"]
    assert f":{own.port}/readyz" in " ".join(gateway["healthcheck"]["test"])
    # Uploads land where the consumer reads its claim checks.
    consumer = compose["services"]["consumer"]
    blob_root = gateway["environment"]["OCR_BLOB_ROOT"]
    assert blob_root == consumer["environment"]["OCR_FILE_ROOTS"]
    assert str(core.blob_root) == "/srv/host/blobs"
    assert any(v.endswith(f":{blob_root}") for v in gateway["volumes"])
    assert gateway["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    config = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "ocr-gateway"]
    assert job["static_configs"][0]["targets"] == [f"gateway:{own.port}"]


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_kubernetes_gateway() -> None:
    [deployment] = docs("gateway-deployment.yaml")
    [service] = docs("gateway-service.yaml")
    [hpa] = docs("gateway-hpa.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["ocr-gateway"]
    env = {item["name"]: item["value"] for item in container["env"]}
    core, own = gateway_settings(env)
    [port] = container["ports"]
    assert port["containerPort"] == own.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(core.blob_root)] == "blobs"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    # The consumers read the same volume under their file roots.
    [patch] = docs("gateway-consumer-blobs.yaml")
    [consumer] = patch["spec"]["template"]["spec"]["containers"]
    assert consumer["env"] == [{"name": "OCR_FILE_ROOTS", "value": str(core.blob_root)}]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {"path": "gateway-consumer-blobs.yaml"} in kustomization["patches"]
    for name in ("gateway-deployment.yaml", "gateway-service.yaml", "gateway-blobs.yaml"):
        assert name in kustomization["resources"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_builds_with_the_gateway() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    deployments = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all(built)
        if d and d["kind"] == "Deployment"
    }
    assert set(deployments) == {"ocr-consumer", "ocr-gateway"}
    spec = deployments["ocr-consumer"]["spec"]["template"]["spec"]
    assert "blobs" in {v["name"] for v in spec["volumes"]}


def test_dashboard_shows_gateway_rate_latency_and_open_tasks() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "ocr-stream.json").read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for family in GatewayMetrics().registry.collect():
        assert family.name in exprs, family.name
    assert "ocr_gateway_request_seconds_bucket" in exprs and "ocr_gateway_open_tasks" in exprs


def test_gateway_guide_lists_every_metric_and_setting() -> None:
    guide = (REPO / "docs" / "gateway.md").read_text()
    for family in GatewayMetrics().registry.collect():
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in guide, shown
    readme = (REPO / "README.md").read_text()
    start = readme.index("-->", readme.index("<!-- gateway-config-table:start")) + 3
    end = readme.index("<!-- gateway-config-table:end -->")
    assert readme[start:end].strip() == markdown_table(), (
        "README gateway settings table is stale: `python -m producer_tools.gateway.settings`"
    )
    assert re.search(r"docs/gateway\.md", readme)
