"""The deployment files agree with the code: settings names and values, probe paths and
ports, KEDA's topic and group, dashboard metric names, the base image.

No container engine or cluster runs here, so this is how compose, the Dockerfile, the
Kubernetes manifests and the Grafana dashboard are validated.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from consumer.config import Settings
from consumer.health import HEALTHZ_PATH, METRICS_PATH, READYZ_PATH
from consumer.metrics import ConsumerMetrics
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.settings import ENV_PREFIX as GATEWAY_PREFIX
from producer_tools.gateway.settings import GatewaySettings
from tests.support.documents import make_png

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
DASHBOARD = REPO / "deploy" / "grafana" / "ocr-stream.json"
OPERATIONS = REPO / "docs" / "operations.md"
VLLM_IMAGE = "vllm/vllm-openai"
# KEDA's kafka scaler names for the SASL mechanisms (its `sasl` parameter).
KEDA_SASL_MECHANISMS = {
    "plaintext": "PLAIN", "scram_sha256": "SCRAM-SHA-256", "scram_sha512": "SCRAM-SHA-512",
}


def settings_from(env: dict[str, Any], where: str) -> Settings:
    """Validate OCR_* values the way the consumer reads them; every name must be a field."""
    fields: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith("OCR_"):
            continue
        if name.startswith(GATEWAY_PREFIX):  # ocr-gateway's own (tests/unit/test_gateway_deploy)
            assert name.removeprefix(GATEWAY_PREFIX).lower() in GatewaySettings.model_fields
            continue
        field = name.removeprefix("OCR_").lower()
        assert field in Settings.model_fields, f"{where}: {name} is not a Settings field"
        fields[field] = value
    # Through the constructor, like environment variables: strings coerced, bounds checked.
    return Settings(**fields)


def env_dict(environment: Any) -> dict[str, Any]:
    if environment is None:
        return {}
    if isinstance(environment, list):  # compose's "KEY=value" list form
        return dict(item.split("=", 1) for item in environment)
    return dict(environment)


# docker-compose.yml -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "topic-init", "consumer"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"].startswith("redis:")
    init = services["topic-init"]
    assert init["entrypoint"] == ["ocr-topics"] and init["command"][0] == "create"
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_kafka_matches_the_local_stack_version(compose: dict[str, Any]) -> None:
    stack = (REPO / "deploy" / "local" / "stack.sh").read_text()
    match = re.search(r"OCR_KAFKA_VERSION:-([0-9.]+)", stack)
    assert match, "stack.sh no longer names its default Kafka version"
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{match.group(1)}"


def test_compose_kafka_cluster_id_is_a_uuid(compose: dict[str, Any]) -> None:
    cluster_id = compose["services"]["kafka"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_compose_consumer(compose: dict[str, Any]) -> None:
    consumer = compose["services"]["consumer"]
    assert consumer["build"]["dockerfile"] == "deploy/Dockerfile"
    [device] = consumer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["device_ids"] == ["0"]
    env = env_dict(consumer["environment"])
    settings = settings_from(interpolated(env, "/srv/host"), "compose consumer")
    assert settings.metrics_host == "0.0.0.0"
    assert "ports" not in consumer, "no host tool reads the consumer's metrics"
    assert any(v.endswith(f":{env['HF_HOME']}") for v in consumer["volumes"]), "no HF cache"
    assert consumer["volumes"][0].split(":")[0] in compose["volumes"]
    assert f":{settings.metrics_port}{READYZ_PATH}" in " ".join(consumer["healthcheck"]["test"])
    grace = re.fullmatch(r"(\d+)s", consumer["stop_grace_period"])
    assert grace and int(grace.group(1)) > settings.shutdown_grace_s
    for name in ("kafka", "redis", "topic-init"):
        assert name in consumer["depends_on"]
    assert consumer["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"


def test_compose_stores_figures_where_the_collector_reads_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    folder = {}
    for name in ("consumer", "collector"):
        env = env_dict(services[name]["environment"])
        location = settings_from(env, f"compose {name}").artifacts_uri
        assert location is not None and location.startswith("file:///"), name
        folder[name] = location.removeprefix("file://")
        mounts = [volume.split(":") for volume in services[name]["volumes"]]
        assert ["artifacts", folder[name]] in [mount[:2] for mount in mounts], name
    assert folder["consumer"] == folder["collector"]
    assert "artifacts" in compose["volumes"]


def test_compose_every_ocr_variable_is_a_setting(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        settings_from(
            interpolated(env_dict(service.get("environment")), "/srv/host"), f"compose {name}"
        )


def test_compose_publishes_only_what_host_tools_need(compose: dict[str, Any]) -> None:
    published = {
        (name, str(port)) for name, service in compose["services"].items()
        for port in service.get("ports", [])
    }
    # Kafka's host listener for the tools; the gateway's HTTP API and web page; Grafana for a
    # person's browser (monitoring profile). Redis, Prometheus and the consumers' metrics
    # stay on the compose network.
    assert published == {
        ("kafka", "127.0.0.1:9094:9094"),
        ("gateway", "127.0.0.1:8080:8080"),
        ("grafana", "127.0.0.1:3000:3000"),
    }
    kafka = compose["services"]["kafka"]["environment"]
    assert "HOST://127.0.0.1:9094" in kafka["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_prometheus_finds_every_consumer(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "ocr-stream"]
    [sd] = job["dns_sd_configs"]
    assert job["metrics_path"] == METRICS_PATH
    port = env_dict(compose["services"]["consumer"]["environment"])["OCR_METRICS_PORT"]
    assert sd["port"] == int(port) and sd["type"] == "A"
    for name, service in _consumers(compose, gpus=3).items():
        assert sd["names"][0] in service["networks"]["default"]["aliases"], name


# Host tools hand files over at the consumers' own path ----------------------------------------


def interpolated(env: dict[str, Any], pwd: str) -> dict[str, Any]:
    """Compose's interpolation of the variables this file uses (${PWD}, ${HF_TOKEN:-})."""
    def expand(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return re.sub(
            r"\$\{(\w+)(?::[-?][^}]*)?\}",
            lambda m: pwd if m.group(1) == "PWD" else "",
            value,
        )

    return {key: expand(value) for key, value in env.items()}


async def test_compose_hand_over_folder_has_one_path_on_both_sides(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumer.documents.fetch import fetch_document
    from producer_tools.submit_requests import RequestOptions, build_submission

    consumer = compose["services"]["consumer"]
    [mount] = [v for v in consumer["volumes"] if v.endswith(":ro") and "PWD" in v]
    source, target, _ = interpolated({"v": mount}, str(tmp_path))["v"].split(":")
    assert source == target == str(tmp_path / "blobs")  # the same path on host and container
    # The host side, as the compose header says: from the folder, OCR_BLOB_ROOT=blobs.
    (tmp_path / "blobs").mkdir()
    monkeypatch.chdir(tmp_path)
    document = make_png(tmp_path / "report.png")
    host = Settings(blob_root=Path("blobs"))
    submission = build_submission(str(document), RequestOptions(), host.blob_root)
    # The consumer side: its OCR_FILE_ROOTS as compose sets it, reading through the mount.
    env = interpolated(env_dict(consumer["environment"]), str(tmp_path))
    fetched = await fetch_document(
        submission.request.source, Settings(file_roots=env["OCR_FILE_ROOTS"])
    )
    assert fetched.data == document.read_bytes()


# One consumer per GPU -------------------------------------------------------------------------

GPUS_SCRIPT = REPO / "deploy" / "compose" / "gpus.py"


def _generated(gpus: int) -> str:
    done = subprocess.run(
        [sys.executable, str(GPUS_SCRIPT), str(gpus)], capture_output=True, text=True,
        timeout=60, check=True,
    )
    return done.stdout


def _consumers(compose: dict[str, Any], gpus: int) -> dict[str, Any]:
    extra = yaml.safe_load(_generated(gpus)) or {}
    return {"consumer": compose["services"]["consumer"], **extra.get("services", {})}


def test_one_consumer_per_gpu_with_distinct_ids(compose: dict[str, Any]) -> None:
    consumers = _consumers(compose, gpus=4)
    assert list(consumers) == ["consumer", "consumer-1", "consumer-2", "consumer-3"]
    ids = [env_dict(s["environment"])["OCR_GROUP_INSTANCE_ID"] for s in consumers.values()]
    names = [env_dict(s["environment"])["OCR_CONSUMER_ID"] for s in consumers.values()]
    gpus = [
        tuple(s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"])
        for s in consumers.values()
    ]
    assert len(set(ids)) == len(set(names)) == len(set(gpus)) == 4
    assert gpus == [("0",), ("1",), ("2",), ("3",)]
    # Nothing else differs from the GPU 0 service: one definition, N copies.
    template = consumers["consumer"]
    for name, service in consumers.items():
        env = env_dict(service["environment"])
        base = env_dict(template["environment"])
        assert {k: v for k, v in env.items() if v != base[k]}.keys() <= {
            "OCR_GROUP_INSTANCE_ID", "OCR_CONSUMER_ID"
        }, name
        same = {k: v for k, v in service.items() if k not in ("environment", "deploy")}
        assert same == {k: v for k, v in template.items() if k not in ("environment", "deploy")}
    assert _generated(1).strip().startswith("#") and yaml.safe_load(_generated(1)) is None


def _check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    # check-jsonschema (PyPI) ships the compose-spec JSON schema (vendor.compose-spec).
    return subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
         "vendor.compose-spec", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def test_compose_files_match_the_compose_spec_schema(tmp_path: Path) -> None:
    generated = tmp_path / "compose.gpus.yaml"
    generated.write_text(_generated(3))
    done = _check_jsonschema(COMPOSE, generated)
    assert done.returncode == 0, done.stdout + done.stderr
    # And the check can fail: a misspelt key is refused.
    broken = tmp_path / "broken.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    assert _check_jsonschema(broken).returncode != 0


def _docker_compose() -> bool:
    try:
        done = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _docker_compose(), reason="no docker compose plugin on this machine")
def test_docker_compose_config_accepts_them(tmp_path: Path) -> None:
    # `config` parses, merges and validates; it needs no Docker engine.
    generated = REPO / "compose.gpus.yaml"
    generated.write_text(_generated(2))
    try:
        done = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "-f", str(generated),
             "--profile", "monitoring", "config", "--format", "json"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={**os.environ, "PWD": str(REPO)},
        )
    finally:
        generated.unlink()
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"consumer", "consumer-1", "kafka", "redis", "prometheus", "grafana"} <= set(services)
    assert services["consumer-1"]["environment"]["OCR_GROUP_INSTANCE_ID"] == "compose-gpu-1"


# Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_starts_from_the_vllm_image_pinned_like_the_gpu_extra() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert froms and froms[-1].startswith(f"{VLLM_IMAGE}:"), froms
    tag = froms[-1].split(":", 1)[1]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    assert f"vllm=={tag.removeprefix('v')}" in gpu, (tag, gpu)


def test_dockerfile_runs_the_consumer_with_valid_settings() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["ocr-consumer"]' in text
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line.split()[1:])
    settings = settings_from(env, "Dockerfile")
    assert f"EXPOSE {settings.metrics_port}" in text
    assert "USER ocr" in text


# Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    """kind -> documents, from every YAML file under deploy/k8s."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    files = sorted(K8S.glob("*.yaml"))
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert "apiVersion" in doc and "kind" in doc, path
            doc["_file"] = path.name
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def one(k8s: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    """The consumer's document of this kind (gateway-*.yaml: test_gateway_deploy.py)."""
    [doc] = [d for d in k8s[kind] if not d["_file"].startswith("gateway-")]
    return doc


@pytest.fixture(scope="module")
def configmap(k8s: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    data: dict[str, str] = one(k8s, "ConfigMap")["data"]
    return data


@pytest.fixture(scope="module")
def config_settings(configmap: dict[str, str]) -> Settings:
    return settings_from(configmap, "ConfigMap")


def test_manifests_are_namespace_agnostic(k8s: dict[str, list[dict[str, Any]]]) -> None:
    for docs in k8s.values():
        for doc in docs:
            assert "namespace" not in doc.get("metadata", {}), doc["_file"]
            assert "namespace" not in doc, doc["_file"]  # a Kustomization's own field


def test_configmap_and_secret_names_are_settings(
    k8s: dict[str, list[dict[str, Any]]], configmap: dict[str, str], config_settings: Settings
) -> None:
    assert config_settings.metrics_host == "0.0.0.0"
    secrets = [d for d in k8s["Secret"] if d["metadata"]["name"] == "ocr-stream-secrets"]
    [secret] = secrets
    for name in secret["stringData"]:
        field = name.removeprefix("OCR_").lower()
        assert name.startswith("OCR_") and field in Settings.model_fields, name
        annotation = str(Settings.model_fields[field].annotation)
        assert "SecretStr" in annotation or field.endswith("username"), name
    # As secret.example.yaml says: with its SASL keys the ConfigMap switches to SASL_SSL and
    # names the mechanism, the one KEDA's Secret uses for the same cluster.
    [keda] = [d for d in k8s["Secret"] if d["metadata"]["name"] == "ocr-stream-keda-kafka"]
    mechanism = KEDA_SASL_MECHANISMS[keda["stringData"]["sasl"]]
    assert keda["stringData"]["tls"] == "enable"
    with_sasl = {
        **configmap, **secret["stringData"],
        "OCR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OCR_KAFKA_SASL_MECHANISM": mechanism,
    }
    settings = settings_from(with_sasl, "ConfigMap + Secret")
    assert isinstance(settings.redis_password, SecretStr)
    assert isinstance(settings.kafka_sasl_password, SecretStr)
    # Left on PLAINTEXT, the consumer refuses SASL keys it would not use, at start-up.
    with pytest.raises(ValidationError, match="would not use them"):
        settings_from({**configmap, **secret["stringData"]}, "ConfigMap + Secret")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_env_and_sources(
    k8s: dict[str, list[dict[str, Any]]], configmap: dict[str, str]
) -> None:
    container = _container(one(k8s, "Deployment"))
    for item in container.get("env", []):
        if item["name"].startswith("OCR_"):
            assert item["name"].removeprefix("OCR_").lower() in Settings.model_fields
    [ref] = container["envFrom"]
    assert ref["configMapRef"]["name"] == one(k8s, "ConfigMap")["metadata"]["name"]
    # The Secret arrives as files in the folder OCR_SECRETS_DIR names, not as variables.
    env = {item["name"]: item.get("value") for item in container["env"]}
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == env["OCR_SECRETS_DIR"]]
    volumes = one(k8s, "Deployment")["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "ocr-stream-secrets"
    assert volume["secret"]["optional"] is True and mount["readOnly"] is True


def test_secret_keys_read_from_a_mounted_folder(
    k8s: dict[str, list[dict[str, Any]]], configmap: dict[str, str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The example Secret as kubelet mounts it: one file per key.
    [secret] = [d for d in k8s["Secret"] if d["metadata"]["name"] == "ocr-stream-secrets"]
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value)
    for name in list(os.environ):
        if name.startswith("OCR_"):
            monkeypatch.delenv(name)
    settings = settings_from(
        {**configmap, "OCR_SECRETS_DIR": str(tmp_path), "OCR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
         "OCR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
        "ConfigMap + mounted Secret",
    )
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == secret["stringData"]["OCR_REDIS_PASSWORD"]
    assert settings.kafka_sasl_username == secret["stringData"]["OCR_KAFKA_SASL_USERNAME"]


def test_deployment_probes_and_ports(
    k8s: dict[str, list[dict[str, Any]]], config_settings: Settings
) -> None:
    deployment = one(k8s, "Deployment")
    container = _container(deployment)
    [port] = container["ports"]
    assert port["containerPort"] == config_settings.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == HEALTHZ_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == READYZ_PATH
    assert container["startupProbe"]["httpGet"]["path"] in (READYZ_PATH, HEALTHZ_PATH)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "model load"


def test_deployment_shutdown_outlasts_the_grace(
    k8s: dict[str, list[dict[str, Any]]], config_settings: Settings
) -> None:
    spec = one(k8s, "Deployment")["spec"]["template"]["spec"]
    container = _container(one(k8s, "Deployment"))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop = float(command[-1]) if command[0] == "sleep" else 0.0
    assert spec["terminationGracePeriodSeconds"] > pre_stop + config_settings.shutdown_grace_s


def test_one_engine_per_pod_with_matching_gpus(
    k8s: dict[str, list[dict[str, Any]]], config_settings: Settings
) -> None:
    resources = _container(one(k8s, "Deployment"))["resources"]
    gpus = int(resources["limits"]["nvidia.com/gpu"])
    assert gpus == config_settings.tensor_parallel_size
    assert int(resources["requests"]["nvidia.com/gpu"]) == gpus


def test_selectors_match_the_pods(k8s: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(k8s, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(k8s, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    service = one(k8s, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = one(k8s, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() \
        <= service["metadata"]["labels"].items()


def test_metrics_service_and_monitor(
    k8s: dict[str, list[dict[str, Any]]], config_settings: Settings
) -> None:
    container_port = _container(one(k8s, "Deployment"))["ports"][0]
    [port] = one(k8s, "Service")["spec"]["ports"]
    assert port["targetPort"] in (container_port["name"], config_settings.metrics_port)
    assert port["port"] == config_settings.metrics_port
    [endpoint] = one(k8s, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == METRICS_PATH


def test_keda_scales_on_the_configured_topic_and_group(
    k8s: dict[str, list[dict[str, Any]]], config_settings: Settings
) -> None:
    scaled = one(k8s, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(k8s, "Deployment")["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == config_settings.topic_requests
    assert meta["consumerGroup"] == config_settings.group_id
    assert meta["bootstrapServers"] == config_settings.kafka_bootstrap
    assert int(meta["lagThreshold"]) >= 1
    # A consumer beyond the partition count would hold a GPU and get no partition.
    assert scaled["spec"]["maxReplicaCount"] == config_settings.topic_partitions
    auth = one(k8s, "TriggerAuthentication")
    keda_secret = [d for d in k8s["Secret"] if d["metadata"]["name"] != "ocr-stream-secrets"]
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {
        d["metadata"]["name"] for d in keda_secret
    }


def test_kustomization_lists_existing_files(k8s: dict[str, list[dict[str, Any]]]) -> None:
    resources = one(k8s, "Kustomization")["resources"]
    for name in resources:
        assert (K8S / name).is_file(), name
    assert "secret.example.yaml" not in resources
    assert {"configmap.yaml", "deployment.yaml", "pdb.yaml", "service.yaml"} <= set(resources)


# Grafana ----------------------------------------------------------------------------------


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for panel in dashboard["panels"]:
        for child in [panel, *panel.get("panels", [])]:
            found.extend(t["expr"] for t in child.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            found.append(variable["definition"])
    return found


def test_dashboard_uses_only_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    defined = ConsumerMetrics().metric_names() | GatewayMetrics().metric_names()
    used = {
        name for expr in _exprs(dashboard)
        for name in re.findall(r"\b(?:ocr|process|python)_[a-z0-9_]+", expr)
    }
    assert used, "the dashboard queries no ocr_* metric"
    assert used <= defined, sorted(used - defined)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"]


def test_dashboard_covers_every_metric_family() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(_exprs(dashboard))
    families = {f.name for f in ConsumerMetrics().registry.collect() if f.name.startswith("ocr_")}
    # Identity and free-form engine numbers are for ad-hoc queries, not panels.
    missing = {f for f in families - {"ocr_consumer", "ocr_engine_stat"} if f not in text}
    assert not missing, sorted(missing)


# docs/operations.md -----------------------------------------------------------------------


def test_operations_guide_lists_every_metric() -> None:
    text = OPERATIONS.read_text()
    for family in ConsumerMetrics().registry.collect():
        if not family.name.startswith("ocr_"):
            # The standard process_* and python_* families: named by their prefix.
            assert f"`{family.name.split('_')[0]}_*`" in text, family.name
            continue
        shown = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "info":
            shown = family.name + "_info"
        assert f"`{shown}" in text, f"docs/operations.md does not list {shown}"
