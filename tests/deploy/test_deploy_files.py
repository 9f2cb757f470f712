"""``deploy/``: what can be checked without a container engine (none runs here, so the
images are never built in this suite). Every YAML file parses; the Compose services,
Kubernetes manifests, HAProxy and Prometheus configs agree with each other and with what
spendgate reads (its ``SPENDGATE_*`` variables, its config file, its routes)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from spendgate.app import create_app
from spendgate.errors import ConfigError
from spendgate.settings import load_settings, unknown_config_keys

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GATEWAYS = ["gateway-1", "gateway-2", "gateway-3"]
SPOOL = "/var/lib/spendgate/spool"


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    [doc] = documents(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in documents(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            found[doc["kind"]] = doc
    return found


def variables_spendgate_reads() -> set[str]:
    """Every ``SPENDGATE_*`` name that appears as a string in the package's source."""
    names: set[str] = set()
    for source in (ROOT / "spendgate").rglob("*.py"):
        names |= set(re.findall(r"\"(SPENDGATE_[A-Z_]+)\"", source.read_text()))
    return names


def provider_key_variables(toml_text: str) -> set[str]:
    config = tomllib.loads(toml_text)
    return {p["api_key_env"] for p in config["providers"].values() if "api_key_env" in p}


def test_every_yaml_file_parses() -> None:
    """Compose, Kubernetes and Prometheus files are YAML that PyYAML reads."""
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(paths) >= 8
    for path in paths:
        assert documents(path), path


def test_compose_services_and_their_order(compose: dict[str, Any]) -> None:
    """PostgreSQL, Redis (noeviction), a one-shot migration, three gateways from one image
    built by deploy/Dockerfile, each with a spool volume of its own, and the load balancer."""
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "lb", *GATEWAYS} <= services.keys()
    redis = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    build = migrate["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    spools = []
    for name in GATEWAYS:
        gateway = services[name]
        assert gateway["image"] == migrate["image"]
        assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert gateway["environment"]["SPENDGATE_SPOOL_DIR"] == SPOOL
        [volume] = gateway["volumes"]
        spools.append(volume.split(":")[0])
        assert volume.endswith(f":{SPOOL}")
        assert _seconds(gateway["stop_grace_period"]) > 30  # the drain
    assert len(set(spools)) == 3 and set(spools) <= compose["volumes"].keys()
    assert set(services["lb"]["depends_on"]) == set(GATEWAYS)


def _seconds(duration: str) -> int:
    assert duration.endswith("s")
    return int(duration[:-1])


def test_compose_environment_is_what_spendgate_reads(compose: dict[str, Any]) -> None:
    """Every SPENDGATE_* variable the gateways and the migration get is one spendgate
    reads; each provider key the config file names is set; the mounted config loads."""
    known = variables_spendgate_reads()
    config_text = (DEPLOY / "spendgate.toml").read_text()
    for name in ["migrate", *GATEWAYS]:
        env = compose["services"][name]["environment"]
        given = {k for k in env if k.startswith("SPENDGATE_")}
        assert given <= known, given - known
    env = compose["services"]["gateway-1"]["environment"]
    assert provider_key_variables(config_text) <= env.keys()
    [config] = compose["services"]["gateway-1"]["configs"]
    assert config["target"] == env["SPENDGATE_CONFIG"]
    assert compose["configs"][config["source"]]["file"] == "./spendgate.toml"
    for variable in provider_key_variables(config_text):
        # optional for Compose (no ":?"): a provider dropped from the config needs no key
        assert env[variable] == f"${{{variable}:-}}", variable
        # kept in the config but not set: spendgate itself refuses to start, naming it
        others = {k: "x" for k in provider_key_variables(config_text) - {variable}}
        with pytest.raises(ConfigError, match=variable):
            load_settings(config_path=str(DEPLOY / "spendgate.toml"), env=others)
    dummy = {k: "x" for k in provider_key_variables(config_text)}
    settings = load_settings(config_path=str(DEPLOY / "spendgate.toml"), env=dummy)
    assert unknown_config_keys(str(DEPLOY / "spendgate.toml")) == []
    assert settings.spool_dir == SPOOL and settings.log_format == "json"
    # behind HAProxy every client has its address: a per-address lock-out would be global
    assert settings.auth_failures_per_minute == 0
    assert ".env" in (ROOT / ".gitignore").read_text()
    example = (DEPLOY / ".env.example").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    assert interpolated <= set(re.findall(r"^([A-Z_]+)=", example, re.M))


def test_haproxy_balances_the_compose_gateways_on_readyz(compose: dict[str, Any]) -> None:
    """The load balancer's servers are the Compose gateways on the port they listen on,
    checked on /readyz; /metrics is not served through it; its config is the one mounted."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", text, re.M)
    assert [(name, host) for name, host, _ in servers] == [(g, g) for g in GATEWAYS]
    assert {port for *_, port in servers} == {"4100"}
    assert "option httpchk GET /readyz" in text and "http-check expect status 200" in text
    assert "deny" in text and "path /metrics" in text
    assert re.search(r"^\s*bind :4100$", text, re.M)
    lb = compose["services"]["lb"]
    [config] = lb["configs"]
    assert compose["configs"][config["source"]]["file"] == "./haproxy.cfg"
    assert lb["ports"] == ["4100:4100"]
    command = " ".join(compose["x-gateway"]["healthcheck"]["test"])
    assert "/readyz" in command
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["spendgate"]' in dockerfile and '"--port", "4100"' in dockerfile


def test_prometheus_scrapes_each_gateway(compose: dict[str, Any]) -> None:
    """Prometheus targets every gateway directly on /metrics."""
    [doc] = documents(DEPLOY / "prometheus.yml")
    [job] = doc["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{g}:4100" for g in GATEWAYS]


def test_kubernetes_manifests(manifests: dict[str, dict[str, Any]]) -> None:
    """A Deployment with readiness /readyz and liveness /healthz probes, a grace period
    above the 30 s drain and scrape annotations; a Service, a ConfigMap whose TOML loads, a
    Secret with the keys spendgate and that TOML need, a migration Job, a PDB."""
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job", "PodDisruptionBudget"} <= (
        manifests.keys()
    )
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert manifests["Service"]["spec"]["selector"] == labels
    assert manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30 + 5  # drain + preStop pause
    [container] = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    [port] = container["ports"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"]) == "4100"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["args"][-1] == "4100"

    env = {e["name"]: e.get("value") for e in container["env"]}
    secret = manifests["Secret"]["stringData"]
    known = variables_spendgate_reads()
    assert {k for k in [*env, *secret] if k.startswith("SPENDGATE_")} <= known
    assert {"SPENDGATE_MASTER_KEY", "SPENDGATE_SECRET_KEY", "SPENDGATE_DATABASE_URL"} <= (
        secret.keys()
    )
    toml_text = manifests["ConfigMap"]["data"]["spendgate.toml"]
    assert provider_key_variables(toml_text) <= secret.keys()
    assert container["envFrom"] == [
        {"secretRef": {"name": manifests["Secret"]["metadata"]["name"]}}
    ]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["spool"] == env["SPENDGATE_SPOOL_DIR"] == SPOOL
    config_volume = volumes["config"]["configMap"]
    assert config_volume["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert f"{mounts['config']}/{config_volume['items'][0]['path']}" == env["SPENDGATE_CONFIG"]
    job = manifests["Job"]["spec"]["template"]["spec"]
    [migrate] = job["containers"]
    assert migrate["args"] == ["db", "migrate"] and migrate["image"] == container["image"]


def test_the_configmap_toml_loads(manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The config the pods mount is valid for spendgate (provider keys given)."""
    toml_text = manifests["ConfigMap"]["data"]["spendgate.toml"]
    path = tmp_path / "spendgate.toml"
    path.write_text(toml_text)
    settings = load_settings(
        config_path=str(path), env={k: "x" for k in provider_key_variables(toml_text)}
    )
    assert unknown_config_keys(str(path)) == []
    assert settings.spool_dir == SPOOL and set(settings.models) >= {"gpt-4o-mini"}
    # behind an Ingress every client has its address: a per-address lock-out would be
    # global (as behind HAProxy in Compose)
    assert settings.auth_failures_per_minute == 0


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.AsyncClient]:
    settings = load_settings(
        env={
            "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'probe.db'}",
            "SPENDGATE_MASTER_KEY": "probe-master",
            "SPENDGATE_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    app = create_app(settings, env={})
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://probe")


async def test_the_probed_paths_exist(
    client: httpx.AsyncClient, compose: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> None:
    """Every path a probe, a health check or a scrape config names answers 200."""
    [container] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    paths = {
        container["readinessProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
        manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/path"
        ],
        *re.findall(r"GET (\S+)", (DEPLOY / "haproxy.cfg").read_text()),
        *re.findall(r"4100(/\w+)", " ".join(compose["x-gateway"]["healthcheck"]["test"])),
    }
    assert paths == {"/readyz", "/healthz", "/metrics"}
    async with client:
        for path in sorted(paths):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
