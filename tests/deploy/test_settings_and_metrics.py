"""What deploy/ tells the servers is what they read, and what it watches is what they
export: every setting in a ConfigMap or a container's environment is in the README's
settings tables (no typo reaches a cluster) and is accepted by the settings loader, and
every metric an alert or the Grafana dashboard uses is defined in the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest

from config_service.app import SPEC as CONFIG
from provisioner.app import SPEC as PROVISIONER
from servicekit.devstack import REPO_ROOT
from servicekit.settings import SERVICE_PREFIXES, load_settings
from tenant_service.app import SPEC as TENANT
from tests.deploy.rendering import OVERLAYS, SERVERS, Obj, named, of_kind, pod_spec, render

README = (REPO_ROOT / "README.md").read_text()
SPECS = {"tenant": TENANT, "config": CONFIG, "provisioner": PROVISIONER}
# Standard OpenTelemetry variables, read by its SDK (README, "Tracing").
OTEL = re.compile(r"^OTEL_[A-Z_]+$")


def documented_settings() -> set[str]:
    """Every variable named in the first column of the README's settings tables;
    ``<SVC>_GRPC_PORT / GRPC_PORT`` stands for TENANT_GRPC_PORT ... and GRPC_PORT."""
    names: set[str] = set()
    for cell in re.findall(r"^\| `([^|]+)` \|", README, flags=re.MULTILINE):
        for name in cell.replace("`", "").split(" / "):
            if "<SVC>" in name:
                names |= {name.replace("<SVC>", p) for p in SERVICE_PREFIXES.values()}
            else:
                names.add(name.strip())
    return names


def environment(objects: list[Obj], service: str) -> tuple[dict[str, str], set[str]]:
    """The server container's environment as the kubelet builds it (ConfigMaps, then
    env with ``$(VAR)`` expanded; secrets as placeholders), and the helper variables
    that exist only to be expanded into others."""
    deployment = named(objects, "Deployment", SERVERS[service][0])
    (container,) = pod_spec(deployment)["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = named(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    helpers: set[str] = set()
    for entry in container.get("env", []):
        value = entry.get("value")
        if value is None:
            value = "placeholder"  # from a Secret
            if entry["name"] == "DATABASE_URL":
                value = "postgresql://agentready:secret@agentready-pg-rw:5432/agentready"
        for ref in re.findall(r"\$\(([A-Z_]+)\)", value):
            helpers.add(ref)
            value = value.replace(f"$({ref})", env[ref])
        env[entry["name"]] = value
    return env, helpers


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_every_setting_given_to_a_server_is_documented(overlay: str) -> None:
    documented = documented_settings()
    objects = render(overlay)
    for service in SERVERS:
        env, helpers = environment(objects, service)
        for name in env:
            if name in helpers or OTEL.match(name):
                continue
            assert name in documented, f"{overlay}: {service} is given {name}, not in README"
    # Every ConfigMap of settings is read by some server, whole.
    read = {
        source["configMapRef"]["name"]
        for service in SERVERS
        for source in pod_spec(named(objects, "Deployment", SERVERS[service][0]))["containers"][
            0
        ].get("envFrom", [])
    }
    settings_maps = {c["metadata"]["name"] for c in of_kind(objects, "ConfigMap")}
    assert read <= settings_maps
    assert {"agentready-settings"} | {f"{n}-settings" for n, _ in SERVERS.values()} == read


def test_a_typo_in_a_setting_would_be_caught() -> None:
    assert "SHUTDOWN_GRACE_SECONDS" in documented_settings()
    assert "SHUTDOWN_GRACE_SECOND" not in documented_settings()
    assert {"TENANT_GRPC_PORT", "GRPC_PORT", "CONFIG_METRICS_PORT"} <= documented_settings()


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_the_servers_accept_the_settings_they_are_given(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    for service in SERVERS:
        env, _ = environment(objects, service)
        for name, value in list(env.items()):
            if name.endswith("_FILE"):  # mounted from Secrets in the cluster
                stand_in = tmp_path / Path(value).name
                stand_in.write_text("stand-in")
                env[name] = str(stand_in)
        spec = SPECS[service]
        settings = load_settings(service, env, extra=spec.extra_settings)
        assert settings.redis_sentinels, "the servers find Redis through its sentinels"
        assert settings.grpc_max_connection_age_seconds > 0
        assert settings.log_format == "json"
        if service == "provisioner":
            assert settings.extra["PROVISIONER_BACKEND"] == "kubernetes"


def exported_metrics() -> set[str]:
    """Names of the Prometheus metrics the servers define (Counter("name", ...) ...)."""
    names: set[str] = set()
    for package in ("servicekit", "tenant_service", "config_service", "provisioner"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            names |= set(
                re.findall(r"(?:Counter|Gauge|Histogram)\(\s*\"([a-z_]+)\"", path.read_text())
            )
    return names


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
KEYWORDS |= {"unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    keywords, label names (in by/without or a selector) or ranges."""
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in KEYWORDS}


def exists(metric: str, exported: set[str]) -> bool:
    if metric == "up":
        return True
    if metric in exported:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", metric)
    return base in exported


def test_every_alert_uses_metrics_the_servers_export() -> None:
    exported = exported_metrics()
    assert {"grpc_server_handled_total", "config_notification_fallback"} <= exported
    rule = named(render("base"), "PrometheusRule", "agentready")
    used = {m for g in rule["spec"]["groups"] for r in g["rules"] for m in metric_names(r["expr"])}
    assert "provisioner_reconciles_total" in used
    missing = {m for m in used if not exists(m, exported)}
    assert not missing, f"alerts on metrics no server exports: {missing}"


def test_every_dashboard_panel_uses_metrics_the_servers_export() -> None:
    exported = exported_metrics()
    path = REPO_ROOT / "deploy" / "base" / "monitoring" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= metric_names(target["expr"])
    missing = {m for m in used if not exists(m, exported)}
    assert not missing, f"dashboard panels on metrics no server exports: {missing}"
    # Every metric the README lists for ConfigService has a panel.
    for metric in ("config_watch_streams", "config_notification_lag_seconds_bucket"):
        assert metric in used
    # The ConfigMap the dashboard sidecar loads is this file.
    (config_map,) = [
        c
        for c in of_kind(render("base"), "ConfigMap")
        if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert json.loads(config_map["data"]["agentready.json"]) == dashboard


# Values the servers give the labels that alerts and panels select on (servicekit.rpc:
# the RPC's kind; grpc.StatusCode names).
LABEL_VALUES = {
    "grpc_type": {"unary", "client_stream", "server_stream", "bidi_stream"},
    "grpc_code": {code.name for code in grpc.StatusCode},
}


def selected_values(expr: str) -> list[tuple[str, str]]:
    """(label, value) of every equality or regex matcher on the labels above."""
    found = []
    for label, values in re.findall(r"\b(grpc_type|grpc_code)\s*[!=]~?\s*\"([^\"]*)\"", expr):
        found += [(label, value) for value in values.split("|")]
    return found


def test_alerts_and_panels_select_label_values_the_servers_emit() -> None:
    rule = named(render("base"), "PrometheusRule", "agentready")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    path = REPO_ROOT / "deploy" / "base" / "monitoring" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    selected = [pair for expr in exprs for pair in selected_values(expr)]
    assert ("grpc_type", "unary") in selected
    wrong = {(label, value) for label, value in selected if value not in LABEL_VALUES[label]}
    assert not wrong, f"selectors on label values no server emits: {wrong}"
