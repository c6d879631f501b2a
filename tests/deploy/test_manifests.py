"""deploy/: every overlay renders, every object is valid, and every workload keeps the
security and availability properties the platform promises (so a later change cannot
quietly drop them).

Standard objects are checked against the official Kubernetes schemas
(``kubernetes-validate``, strict: unknown fields are errors). CloudNativePG, the
Prometheus Operator, External Secrets and Argo CD publish no package with their CRD
schemas on the registries this project can use (PyPI, npm, Debian): their objects are
skipped by kind for schema validation (the reason is printed) and checked field by
field below instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError

from servicekit.devstack import REPO_ROOT
from servicekit.settings import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS
from tests.deploy.rendering import (
    OVERLAYS,
    SERVERS,
    Obj,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    render,
    selects,
    workloads,
)

KUBERNETES_VERSION = "1.37.0"
# Custom resources without a schema package: kind → why they are skipped.
NO_SCHEMA_PACKAGE = {
    "Cluster": "CloudNativePG publishes its CRDs only in its release manifests",
    "ScheduledBackup": "CloudNativePG publishes its CRDs only in its release manifests",
    "ExternalSecret": "External Secrets publishes its CRDs only in its Helm chart",
    "ServiceMonitor": "the Prometheus Operator publishes its CRDs only in its release bundle",
    "PrometheusRule": "the Prometheus Operator publishes its CRDs only in its release bundle",
}
# The fields a PrometheusRule's rule may have (monitoring.coreos.com/v1 Rule).
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
ALL = (*OVERLAYS, "base")


def server_deployments(objects: list[Obj]) -> dict[str, Obj]:
    return {svc: named(objects, "Deployment", name) for svc, (name, _) in SERVERS.items()}


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    found: list[Obj] = [*spec.get("initContainers", []), *spec["containers"]]
    return found


@pytest.mark.parametrize("overlay", ALL)
def test_every_object_passes_strict_schema_validation(overlay: str) -> None:
    objects = render(overlay)
    skipped: dict[str, str] = {}
    for obj in objects:
        kind = obj["kind"]
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except SchemaNotFoundError:
            assert kind in NO_SCHEMA_PACKAGE, f"{kind} has no schema and no reason to skip it"
            skipped[kind] = NO_SCHEMA_PACKAGE[kind]
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{overlay}: {kind}/{obj['metadata']['name']}: {exc.message} at "
                f"{'/'.join(str(p) for p in exc.path)}"
            ) from None
    for kind, reason in sorted(skipped.items()):
        print(f"{overlay}: {kind} not schema-validated: {reason}")  # shown with -rA / -s
    assert not of_kind(objects, "Secret"), "no Secret is ever committed: reference them"


def check_prometheus_rule(rule: Obj) -> None:
    """The fields of monitoring.coreos.com/v1 PrometheusRule that matter, field by field."""
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}, group["name"]
        for item in group["rules"]:
            assert set(item) <= RULE_FIELDS, f"unknown fields {set(item) - RULE_FIELDS}"
            assert item.get("expr"), item
            assert DURATION.match(item.get("for", "0")), item
            if "alert" in item:
                assert item["labels"]["severity"] in ("critical", "warning"), item["alert"]
                assert item["annotations"]["summary"], item["alert"]


def test_prometheus_rules_are_well_formed_and_a_typo_is_caught() -> None:
    for overlay in ALL:
        for rule in of_kind(render(overlay), "PrometheusRule"):
            check_prometheus_rule(rule)
    bad = {"spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "exprr": "1"}]}]}}
    with pytest.raises(AssertionError, match="unknown fields"):
        check_prometheus_rule(bad)


@pytest.mark.parametrize("overlay", ALL)
def test_every_workload_meets_pod_security_restricted(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 0) != 0, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{name}: {host}"
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0, where


@pytest.mark.parametrize("overlay", ALL)
def test_every_container_has_requests_limits_and_probes(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        for container in pod_spec(workload)["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(bound, {}), f"{where}: {bound}.{resource}"
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where


@pytest.mark.parametrize("overlay", ALL)
def test_only_the_provisioner_mounts_a_service_account_token(overlay: str) -> None:
    objects = render(overlay)
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        mounts = pod_spec(workload).get("automountServiceAccountToken")
        if name == "agentready-provisioner":
            assert mounts is True
        else:
            assert mounts is False, name


@pytest.mark.parametrize("overlay", ALL)
def test_the_servers_run_their_module_on_their_ports_with_grpc_probes(overlay: str) -> None:
    for service, deployment in server_deployments(render(overlay)).items():
        (container,) = pod_spec(deployment)["containers"]
        module = SERVERS[service][1]
        # The image's entrypoint is `python -m`: the args name the service's package.
        assert container["args"] == [module]
        assert (REPO_ROOT / module / "__main__.py").is_file()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {
            "grpc": DEFAULT_GRPC_PORTS[service],
            "metrics": DEFAULT_METRICS_PORTS[service],
        }
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"], f"{service} {probe}"
            assert "service" not in container[probe]["grpc"]  # the server's overall health


@pytest.mark.parametrize("overlay", ALL)
def test_termination_grace_covers_the_servers_drain(overlay: str) -> None:
    objects = render(overlay)
    settings = named(objects, "ConfigMap", "agentready-settings")["data"]
    drain = float(settings["SHUTDOWN_DRAIN_SECONDS"])
    grace = float(settings["SHUTDOWN_GRACE_SECONDS"])
    assert drain > 0  # health NOT_SERVING before the server stops taking calls
    for service, deployment in server_deployments(objects).items():
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop > 0, service
        # SIGTERM comes after the preStop sleep; the kill after the whole period.
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + grace + 5, service


@pytest.mark.parametrize("overlay", ALL)
def test_every_workload_has_a_disruption_budget_and_spreads(overlay: str) -> None:
    objects = render(overlay)
    budgets = of_kind(objects, "PodDisruptionBudget")
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        labels = pod_labels(workload)
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        (budget,) = matching
        # Never a budget that blocks every eviction (node drains must go on).
        assert budget["spec"].get("maxUnavailable", 1) >= 1, name
        spread = {
            c["topologyKey"]: c
            for c in pod_spec(workload).get("topologySpreadConstraints", [])
            if selects(c["labelSelector"], labels)
        }
        assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        assert all(c["maxSkew"] == 1 for c in spread.values()), name


@pytest.mark.parametrize("overlay", ["prod", "base"])
def test_production_is_highly_available(overlay: str) -> None:
    objects = render(overlay)
    deployments = server_deployments(objects)
    for service in ("tenant", "config", "provisioner"):
        assert deployments[service]["spec"]["replicas"] >= 2, service
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")
    }
    assert set(autoscalers) == {"agentready-tenant", "agentready-config"}
    for hpa in autoscalers.values():
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert named(objects, "Cluster", "agentready-pg")["spec"]["instances"] == 3
    assert named(objects, "StatefulSet", "agentready-redis")["spec"]["replicas"] == 3


def test_dev_is_one_replica_of_everything() -> None:
    objects = render("dev")
    for deployment in server_deployments(objects).values():
        assert deployment["spec"]["replicas"] == 1
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    assert named(objects, "Cluster", "agentready-pg")["spec"]["instances"] == 1
    assert named(objects, "StatefulSet", "agentready-redis")["spec"]["replicas"] == 1


@pytest.mark.parametrize("overlay", ALL)
def test_redis_sentinel_settings_agree_with_the_statefulset(overlay: str) -> None:
    """The sentinels the servers are told of are the pods that exist, and the quorum
    is a majority of them (a dev overlay that scaled Redis down but kept three
    sentinel addresses would fail here)."""
    objects = render(overlay)
    redis = named(objects, "StatefulSet", "agentready-redis")
    replicas = redis["spec"]["replicas"]
    settings = named(objects, "ConfigMap", "agentready-settings")["data"]
    headless = redis["spec"]["serviceName"]
    assert settings["REDIS_SENTINELS"].split(",") == [
        f"agentready-redis-{i}.{headless}:26379" for i in range(replicas)
    ]
    for container in pod_spec(redis)["containers"]:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["REPLICAS"] == str(replicas), container["name"]
        assert env["QUORUM"] == str(replicas // 2 + 1), container["name"]
        assert env["MASTER_NAME"] == settings["REDIS_SENTINEL_MASTER"]
        assert env["STATEFULSET"] == redis["metadata"]["name"]
        assert env["HEADLESS"] == headless
    named(objects, "Service", headless)


@pytest.mark.parametrize("overlay", ALL)
def test_services_name_their_ports_and_are_scraped(overlay: str) -> None:
    objects = render(overlay)
    (monitor,) = of_kind(objects, "ServiceMonitor")
    for service, deployment in server_deployments(objects).items():
        svc = named(objects, "Service", SERVERS[service][0])
        assert selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(deployment))
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
        assert ports == {
            "grpc": (DEFAULT_GRPC_PORTS[service], "grpc"),
            "metrics": (DEFAULT_METRICS_PORTS[service], "metrics"),
        }
        assert selects(monitor["spec"]["selector"], svc["metadata"]["labels"]), service
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def allowed(policies: list[Obj], labels: dict[str, str], direction: str) -> list[Obj]:
    """The rules of ``direction`` (ingress/egress) that apply to pods with ``labels``."""
    rules: list[Obj] = []
    for policy in policies:
        spec = policy["spec"]
        applies = not spec["podSelector"] or selects(spec["podSelector"], labels)
        if applies and direction.capitalize() in spec["policyTypes"]:
            rules += spec.get(direction, [])
    return rules


def ports_of(rules: list[Obj], peer: dict[str, str] | None = None) -> set[int]:
    """Ports the rules open (to or from pods with ``peer`` labels, when given)."""
    found: set[int] = set()
    for rule in rules:
        peers = rule.get("to", rule.get("from"))
        if (
            peer is not None
            and peers is not None
            and not any(
                (
                    ("podSelector" in p and selects(p["podSelector"], peer))
                    and "namespaceSelector" not in p
                )
                or p.get("namespaceSelector") == {}
                for p in peers
            )
        ):
            continue
        found |= {p["port"] for p in rule.get("ports", [])}
    return found


@pytest.mark.parametrize("overlay", ALL)
def test_network_policies_deny_by_default_and_open_the_suites_flows(overlay: str) -> None:
    objects = render(overlay)
    policies = of_kind(objects, "NetworkPolicy")
    default = [
        p
        for p in policies
        if not p["spec"]["podSelector"]
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert default
    assert set(default[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    postgres = {"cnpg.io/cluster": "agentready-pg"}
    redis = pod_labels(named(objects, "StatefulSet", "agentready-redis"))
    servers = server_deployments(objects)
    for service, deployment in servers.items():
        labels = pod_labels(deployment)
        assert DEFAULT_GRPC_PORTS[service] in ports_of(allowed(policies, labels, "ingress"))
        assert DEFAULT_METRICS_PORTS[service] in ports_of(allowed(policies, labels, "ingress"))
        egress = allowed(policies, labels, "egress")
        assert 53 in ports_of(egress)
        assert 5432 in ports_of(egress, postgres), service
        assert {6379, 26379} <= ports_of(egress, redis), service
        assert DEFAULT_GRPC_PORTS["config"] in ports_of(egress, pod_labels(servers["config"]))
    tenant_egress = allowed(policies, pod_labels(servers["tenant"]), "egress")
    assert DEFAULT_GRPC_PORTS["provisioner"] in ports_of(
        tenant_egress, pod_labels(servers["provisioner"])
    )
    assert 443 in ports_of(allowed(policies, pod_labels(servers["provisioner"]), "egress"))
    assert 443 not in ports_of(tenant_egress)  # only the Provisioner reaches the API server
    assert 5432 in ports_of(allowed(policies, postgres, "ingress"), pod_labels(servers["tenant"]))
    assert 6379 in ports_of(allowed(policies, redis, "ingress"), pod_labels(servers["config"]))


def test_the_database_roles_are_the_ones_the_migrations_switch_to() -> None:
    roles_in_migrations = {
        match
        for path in REPO_ROOT.glob("*/migrations/*.sql")
        for match in re.findall(r"CREATE ROLE (\w+)", path.read_text())
    }
    assert roles_in_migrations == {
        "agentready_tenant",
        "agentready_config",
        "agentready_provisioner",
    }
    for overlay in ALL:
        cluster = named(render(overlay), "Cluster", "agentready-pg")["spec"]
        owner = cluster["bootstrap"]["initdb"]["owner"]
        roles = {r["name"]: r for r in cluster["managed"]["roles"]}
        for role in roles_in_migrations:
            assert roles[role]["login"] is False, role
        assert roles[owner]["login"] is True
        assert roles[owner]["createrole"] is True  # the migrations' CREATE ROLE runs
        assert set(roles[owner]["inRoles"]) == roles_in_migrations
        assert cluster["enableSuperuserAccess"] is False


def test_every_server_reads_the_database_url_from_the_clusters_secret() -> None:
    for overlay in ALL:
        objects = render(overlay)
        cluster = named(objects, "Cluster", "agentready-pg")
        for deployment in server_deployments(objects).values():
            (container,) = pod_spec(deployment)["containers"]
            env = {e["name"]: e for e in container["env"]}
            ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            # CloudNativePG writes <cluster>-app with the `uri` of the owner.
            assert ref == {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}


def test_prod_backs_up_to_object_storage_with_external_secrets() -> None:
    objects = render("prod")
    cluster = named(objects, "Cluster", "agentready-pg")
    store = cluster["spec"]["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith("s3://")
    assert cluster["spec"]["affinity"]["podAntiAffinityType"] == "required"
    (scheduled,) = of_kind(objects, "ScheduledBackup")
    assert scheduled["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    produced = {e["spec"]["target"]["name"]: e for e in of_kind(objects, "ExternalSecret")}
    for e in produced.values():
        assert e["apiVersion"] == "external-secrets.io/v1"
        assert e["spec"]["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
    referenced = secrets_referenced(objects)
    credentials = store["s3Credentials"]
    referenced |= {credentials["accessKeyId"]["name"], credentials["secretAccessKey"]["name"]}
    operator_made = {f"{cluster['metadata']['name']}-app"}
    assert referenced - operator_made == set(produced), "every secret has its ExternalSecret"


def secrets_referenced(objects: list[Obj]) -> set[str]:
    names: set[str] = set()
    for workload in workloads(objects):
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    names.add(source["secretRef"]["name"])
    return names


def test_the_dev_secrets_are_the_ones_the_readme_creates() -> None:
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    for name in secrets_referenced(render("dev")) - {"agentready-pg-app"}:
        assert f"kubectl -n agentready create secret generic {name}" in readme, name


def test_argo_cd_has_an_application_per_overlay() -> None:
    import yaml  # type: ignore[import-untyped, unused-ignore]

    applications: dict[str, Any] = {}
    for file in sorted((REPO_ROOT / "deploy" / "argocd").glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            assert doc["apiVersion"] == "argoproj.io/v1alpha1"
            assert doc["kind"] == "Application"
            applications[doc["spec"]["source"]["path"]] = doc
    assert set(applications) == {f"deploy/overlays/{overlay}" for overlay in OVERLAYS}
    for path, app in applications.items():
        assert (REPO_ROOT / path / "kustomization.yaml").is_file()
        assert app["spec"]["destination"]["namespace"] == "agentready"
        assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        # The HPAs own the replica counts; Argo CD must not fight them.
        ignored = {
            (d["kind"], d.get("name")): d["jsonPointers"] for d in app["spec"]["ignoreDifferences"]
        }
        for name in ("agentready-tenant", "agentready-config"):
            assert ignored[("Deployment", name)] == ["/spec/replicas"]


def test_the_redis_scripts_are_valid_shell() -> None:
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no POSIX shell to check the scripts' syntax with")
    for script in ("redis.sh", "sentinel.sh"):
        path = REPO_ROOT / "deploy" / "base" / "redis" / script
        result = subprocess.run(
            [shell, "-n", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{script}: {result.stderr}"
        text = path.read_text()
        assert "set -eu" in text
        # The password never goes on a command line (ps would show it).
        assert "-a " not in text
