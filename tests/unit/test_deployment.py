"""Deployment files keep their promises: the compose file and the Kubernetes manifests run
every process kind with a command the `customers` CLI accepts; the Kubernetes pods run
non-root on a read-only filesystem with probes where they can have them, take secrets from
the Secret only, and are scaled and protected as documented; the alert rules use metric
names the code exports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import PROCESS_KINDS
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deployments" / "k8s"
ALERTS = ROOT / "deployments" / "prometheus" / "alerts.yml"
KINDS = set(PROCESS_KINDS) - {"all"}
HTTP_KINDS = {  # kind → the setting of its port
    "gateway": "CUSTOMERS_HTTP_PORT",
    "write-api": "CUSTOMERS_WRITE_API_PORT",
    "read-api": "CUSTOMERS_READ_API_PORT",
}
APIS = {*HTTP_KINDS, "grpc"}
SECRET_ENV = {
    "DATABASE_URL",
    "CUSTOMERS_MASTER_KEY",
    "CUSTOMERS_PREVIOUS_MASTER_KEYS",
    "CUSTOMERS_JWT_SECRET",
}


def test_compose_runs_every_process_kind() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = [s.get("command") for s in compose["services"].values() if s.get("command")]
    served = {c[2] for c in commands if c[:2] == ["customers", "serve"]}
    assert served <= KINDS
    assert served >= {"gateway", "grpc", "projector", "relay", "segments", "ingest"}
    assert ["customers", "migrate"] in commands
    assert (ROOT / "Dockerfile").is_file()


# --------------------------------------------------------------------------- Kubernetes


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[dict[str, Any]]:
    """Everything kustomization.yaml applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(K8S / name)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def deployments() -> dict[str, dict[str, Any]]:
    """Deployments by the process kind their one container serves."""
    found: dict[str, dict[str, Any]] = {}
    for d in of_kind("Deployment"):
        (container,) = d["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[:2] == ["customers", "serve"] and len(command) == 3, command
        assert command[2] not in found, f"two Deployments serve {command[2]}"
        found[command[2]] = d
    return found


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for d in [*of_kind("Deployment"), *of_kind("Job")]:
        yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def config() -> dict[str, str]:
    (config_map,) = of_kind("ConfigMap")
    data: dict[str, str] = config_map["data"]
    return data


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.template.yaml"}
    assert kustomization["namespace"] == "customers"
    assert [d["metadata"]["name"] for d in of_kind("Namespace")] == ["customers"]


def test_every_process_kind_has_a_deployment_serving_it() -> None:
    assert set(deployments()) == KINDS
    (job,) = of_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["customers", "migrate"]
    images = {c["image"] for _, spec in pod_specs() for c in spec["containers"]}
    assert len(images) == 1, "every process runs the same image"


@pytest.mark.parametrize("kind", sorted(HTTP_KINDS))
def test_http_processes_are_probed_on_health_and_ready(kind: str) -> None:
    (container,) = deployments()[kind]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config()[HTTP_KINDS[kind]]), "port differs from the setting"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["lifecycle"]["preStop"], "no time for endpoints to drop the pod"


def test_grpc_is_probed_with_grpc_health_checking() -> None:
    (container,) = deployments()["grpc"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    default = Settings.model_fields["grpc_port"].default
    assert ports["grpc"] == int(config()["CUSTOMERS_GRPC_PORT"]) == default
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"


def test_metrics_are_scraped_where_they_are_served() -> None:
    metrics_port = int(config()["CUSTOMERS_METRICS_PORT"])
    for kind, d in deployments().items():
        template = d["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        expected = ports["http"] if kind in HTTP_KINDS else metrics_port
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == expected, kind
        assert annotations["prometheus.io/path"] == "/metrics"


def test_pods_run_non_root_on_a_read_only_filesystem() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            assert mounts.get("tmp") == "/tmp" and "tmp" in writable, name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])


def test_secrets_are_referenced_never_inlined() -> None:
    (template,) = documents(K8S / "secret.template.yaml")
    secret_keys = template["stringData"]
    assert all(v in ("REPLACE_ME", "") for v in secret_keys.values()), "a real secret?"
    assert not SECRET_ENV & set(config()), "a secret in the ConfigMap"
    for name, spec in pod_specs():
        for container in spec["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert "DATABASE_URL" in env, name
            for var in SECRET_ENV & set(env):
                assert "value" not in env[var], f"{name}: {var} inlined"
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == template["metadata"]["name"]
                assert ref["key"] in secret_keys
            assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["customers-config"]


def test_configmap_holds_only_real_settings() -> None:
    known = {"DATABASE_URL", "NATS_URL"} | {
        f"CUSTOMERS_{field.upper()}" for field in Settings.model_fields
    }
    assert set(config()) <= known


def test_apis_are_autoscaled_and_kept_available() -> None:
    by_name = {d["metadata"]["name"]: kind for kind, d in deployments().items()}
    scaled = set()
    for hpa in of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in by_name
        assert hpa["spec"]["minReplicas"] >= 2
        scaled.add(by_name[target["name"]])
    assert scaled == APIS
    protected = set()
    for pdb in of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        (kind,) = [
            k
            for k, d in deployments().items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pdb["spec"]["minAvailable"] < deployments()[kind]["spec"]["replicas"]
        protected.add(kind)
    assert protected == APIS


def test_services_select_a_deployment_and_name_its_ports() -> None:
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        (target,) = [
            d
            for d in deployments().values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        (container,) = target["spec"]["template"]["spec"]["containers"]
        names = {p["name"] for p in container["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_singletons_are_never_doubled_by_a_rollout() -> None:
    for kind in ("projector", "relay"):
        spec = deployments()[kind]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"


# --------------------------------------------------------------------------- alert rules


def exported_metric_names() -> set[str]:
    """Every sample name the service's processes can expose."""
    from prometheus_client import REGISTRY

    import service.metrics  # noqa: F401 — registers the metrics
    from read_api.figures import NAMES

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names = set(NAMES)
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_alert_rules_use_exported_metrics_only() -> None:
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules)
    exported = exported_metric_names()
    used: set[str] = set()
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        names = set(re.findall(r"\bcustomers_[a-z0-9_]+", rule["expr"]))
        assert names <= exported, f"{rule['alert']}: {names - exported} not exported"
        used |= names
    # The spec's alerting section: health, errors, latency, pipeline lag, pools, privacy,
    # customer acquisition.
    for needed in (
        "customers_http_requests_total",
        "customers_http_request_duration_seconds_bucket",
        "customers_projection_lag_events",
        "customers_relay_lag_events",
        "customers_db_pool_connections",
        "customers_privacy_requests_overdue",
        "customers_profiles_created_24h",
    ):
        assert needed in used
    assert any(r["expr"].startswith("up{") for r in rules), "no instance-down rule"
