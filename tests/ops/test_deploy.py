"""The deployment artefacts (deploy/): Dockerfile, compose file and Kubernetes manifests.

No container engine or cluster runs here, so these are structural checks on the parsed files: the right
kinds and API versions, selectors that match their pods, references (ConfigMaps, Secrets, volumes,
services, scale targets) that resolve, non-root containers, and settings and command-line options that the
code really has. They catch the mistakes that make ``kubectl apply`` or ``docker compose up`` fail or run
something else than intended; they are not the Kubernetes API server's own validation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from click import Context

from finsecure.cli import app
from finsecure.core.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}
SETTINGS_ENV = {f"FINSECURE_{name.upper()}" for name in Settings.model_fields}


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def workloads() -> dict[str, dict[str, Any]]:
    return {**by_kind("Deployment"), **by_kind("StatefulSet")}


def check_cli_args(args: list[str]) -> None:
    """The container's arguments are a real ``finsecure`` command with real options."""
    command = typer.main.get_command(app)
    ctx = Context(command)
    sub = command.get_command(ctx, args[0])  # type: ignore[attr-defined]
    assert sub is not None, f"no finsecure command {args[0]!r}"
    sub.make_context(args[0], list(args[1:]))


def test_k8s__every_document_has_a_known_kind_version_and_name() -> None:
    docs = k8s_documents()
    assert {doc["kind"] for doc in docs} >= {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret"}
    for doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_k8s__workloads_select_their_own_pods_and_run_as_non_root() -> None:
    for name, workload in workloads().items():
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert "memory" in container["resources"]["limits"]
            check_cli_args(container["args"])


def test_k8s__references_resolve() -> None:
    configmaps, secrets, claims = by_kind("ConfigMap"), by_kind("Secret"), by_kind("PersistentVolumeClaim")
    services = by_kind("Service")
    for name, workload in workloads().items():
        pod = workload["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for volume in volumes.values():
            assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in pod["containers"]:
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            port_names = {port["name"] for port in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in port_names
        if workload["kind"] == "StatefulSet":
            governing = services[workload["spec"]["serviceName"]]
            assert governing["spec"]["clusterIP"] == "None"
    for name, service in services.items():
        selected = [
            w
            for w in workloads().values()
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"service {name} selects no pods"
        ports = {
            p["name"]
            for w in selected
            for c in w["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    for name, hpa in by_kind("HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["name"] in workloads(), name
        assert workloads()[target["name"]]["kind"] == target["kind"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_k8s__configuration_keys_are_real_settings() -> None:
    for doc in [*by_kind("ConfigMap").values(), *by_kind("Secret").values()]:
        keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        assert keys <= SETTINGS_ENV, keys - SETTINGS_ENV
    jwt = by_kind("Secret")["finsecure-secrets"]["stringData"]["FINSECURE_JWT_SECRET"]
    assert len(jwt) >= 32  # the settings refuse shorter secrets


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose__runs_api_workers_and_their_servers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "postgres", "nats", "redis"} <= services.keys()
    workers = [name for name in services if name.startswith("worker")]
    assert len(workers) >= 2
    assert "-js" in services["nats"]["command"]
    for name in ["api", *workers]:
        service = services[name]
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        check_cli_args(service["command"])
        assert set(service["environment"]) <= SETTINGS_ENV, set(service["environment"]) - SETTINGS_ENV
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"]
        for dependency in service["depends_on"]:
            assert dependency in services
    for name in workers:
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"


def test_dockerfile__multi_stage_non_root_with_the_dashboard_built_in() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.MULTILINE)
    assert len(stages) >= 3
    assert "npm ci" in text
    assert "npm run build" in text
    assert "COPY --from=frontend" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, flags=re.MULTILINE)
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?(\S+/) ", text, flags=re.MULTILINE):
        assert (DEPLOY.parent / copied).exists(), copied
