"""The Provisioner's pure parts: quantities, input checks, conditions, error
classification, backoff and the choice of backend."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from provisioner.adapters.kube_http import ProtocolError, classify, status_error
from provisioner.app import SETTINGS, choose_backend
from provisioner.domain.checks import check_labels, check_owners
from provisioner.domain.manifests import (
    PlatformService,
    network_policy,
    parse_platform_services,
)
from provisioner.domain.model import (
    ApplyReport,
    BackendError,
    ConditionStatus,
    ConditionType,
    Quota,
    StepResult,
    TenantSpec,
    conditions_after,
    unknown_conditions,
)
from provisioner.domain.quantity import QuantityError, parse_quantity
from provisioner.service_layer.tenants import Timing, same_quota
from servicekit.errors import SettingsError
from servicekit.requests import check_organization


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10", Decimal(10)),
        ("500m", Decimal("0.5")),
        ("20Gi", Decimal(20 * 2**30)),
        ("1.5G", Decimal("1.5e9")),
        ("1e3", Decimal(1000)),
        ("0", Decimal(0)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_parse_like_kubernetes(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "ten", "-1", "20GB", "1.5.2", "1e999", "Gi", "1 Gi", "0x1"])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_quotas_compare_by_value() -> None:
    assert same_quota(Quota(cpu="1", memory="1024Mi"), Quota(cpu="1000m", memory="1Gi"))
    assert not same_quota(Quota(cpu="1"), Quota(cpu="2"))


def test_input_checks_name_the_field() -> None:
    assert check_organization("acme") == []
    assert [v.field for v in check_organization("-acme")] == ["organization"]
    assert [v.field for v in check_owners([])] == ["owners"]
    assert [v.field for v in check_owners(["ok", " padded"])] == ["owners[1]"]
    assert check_labels({"team": "ml", "tenant.agentready.io/tier": "gold", "empty": ""}) == []
    bad = check_labels(
        {
            "agentready.io/isolation-ready": "false",
            "app.kubernetes.io/managed-by": "me",
            "x.kubernetes.io/a": "b",
            "-bad": "v",
            "ok": "bad value",
            "example.com/tier": "gold",
            "istio-injection": "enabled",
        }
    )
    assert {v.field for v in bad} == {
        "labels[agentready.io/isolation-ready]",
        "labels[app.kubernetes.io/managed-by]",
        "labels[x.kubernetes.io/a]",
        "labels[-bad]",
        "labels[ok]",
        "labels[example.com/tier]",
        "labels[istio-injection]",
    }
    assert [v.field for v in check_labels({f"k{i}": "v" for i in range(33)})] == ["labels"]


def test_conditions_move_their_transition_time_only_on_change() -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    t1 = t0 + dt.timedelta(minutes=5)
    ok = ApplyReport([StepResult(kind) for kind in ConditionType])
    first = conditions_after(ok, unknown_conditions(), t0)
    assert {c.status for c in first} == {ConditionStatus.TRUE}
    assert conditions_after(ok, first, t1) == first
    broken = BackendError("denied", temporary=False, reason="Forbidden")
    failing = ApplyReport(
        [StepResult(k, broken if k is ConditionType.RBAC else None) for k in ConditionType]
    )
    after = {c.type: c for c in conditions_after(failing, first, t1)}
    assert (after[ConditionType.RBAC].status, after[ConditionType.RBAC].reason) == (
        ConditionStatus.FALSE,
        "Forbidden",
    )
    assert after[ConditionType.RBAC].last_transition_time == t1
    assert after[ConditionType.QUOTA].last_transition_time == t0


def api_error(status: int, reason: str = "", headers: dict[str, str] | None = None) -> BackendError:
    body = f'{{"kind": "Status", "reason": "{reason}", "message": "m"}}'.encode()
    return status_error(status, body, headers or {})


@pytest.mark.parametrize(
    ("error", "temporary", "reason"),
    [
        (api_error(500, "InternalError"), True, "InternalError"),
        (api_error(503, "ServiceUnavailable"), True, "ServiceUnavailable"),
        (api_error(429, "TooManyRequests", {"Retry-After": "2"}), True, "TooManyRequests"),
        (api_error(409, "Conflict"), True, "Conflict"),
        (api_error(403, "Forbidden"), False, "Forbidden"),
        (api_error(422, "Invalid"), False, "Invalid"),
        (api_error(401, "Unauthorized"), False, "Unauthorized"),
        (classify(TimeoutError()), True, "Timeout"),
        (classify(asyncio.IncompleteReadError(b"HTTP/1.1 200", None)), True, "Unreachable"),
        (classify(ConnectionResetError("reset")), True, "Unreachable"),
        (classify(ProtocolError("not HTTP")), True, "BadResponse"),
        (classify(ConnectionRefusedError("refused")), True, "Unreachable"),
        (classify(ValueError("a bug")), False, "ClientError"),
    ],
)
def test_errors_are_told_apart(error: BackendError, temporary: bool, reason: str) -> None:
    assert (error.temporary, error.reason) == (temporary, reason)


def test_a_terminating_namespace_is_waited_for() -> None:
    body = (
        b'{"kind": "Status", "reason": "Forbidden", "message": "m", '
        b'"details": {"causes": [{"reason": "NamespaceTerminating"}]}}'
    )
    error = status_error(403, body, {})
    assert (error.temporary, error.reason) == (True, "NamespaceTerminating")


def test_retry_after_is_kept() -> None:
    assert api_error(429, "TooManyRequests", {"Retry-After": "2"}).retry_after == 2.0


def test_backoff_doubles_up_to_the_cap_and_permanent_errors_wait_longest() -> None:
    timing = Timing(interval=30, backoff_base=1, backoff_max=60)
    for failures in range(1, 12):
        expected = min(60, 2 ** (failures - 1))  # 1, 2, 4, ... 32, then the cap
        for _ in range(50):  # jitter takes up to a fifth off, never adds
            assert 0.8 * expected <= timing.retry_delay(failures, temporary=True) <= expected
    assert timing.retry_delay(1, temporary=False) == 60


def test_the_backend_is_chosen_from_the_settings(tmp_path: Path) -> None:
    defaults = {name: s.default for name, s in SETTINGS.items()}
    assert choose_backend(defaults) == "gitops"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    assert choose_backend({**defaults, "KUBECONFIG": str(kubeconfig)}) == "kubernetes"
    assert choose_backend({**defaults, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kubernetes"
    gitops = {**defaults, "KUBECONFIG": str(kubeconfig), "PROVISIONER_BACKEND": "gitops"}
    assert choose_backend(gitops) == "gitops"
    with pytest.raises(SettingsError, match="PROVISIONER_BACKEND"):
        choose_backend({**defaults, "PROVISIONER_BACKEND": "helm"})
    with pytest.raises(SettingsError, match="KUBECONFIG"):
        choose_backend({**defaults, "PROVISIONER_BACKEND": "kubernetes"})
    with pytest.raises(SettingsError, match="no such file"):
        choose_backend({**defaults, "KUBECONFIG": str(tmp_path / "missing")})


def test_tenant_pods_may_reach_the_platform_services_and_nothing_else() -> None:
    platform = parse_platform_services("agentready/agentready-config:50052, ops/tools:8443")
    assert platform == (
        PlatformService("agentready", "agentready-config", 50052),
        PlatformService("ops", "tools", 8443),
    )
    spec = TenantSpec("acme", ("ada@example.com",), Quota(), {})
    egress = network_policy(spec, platform=platform)["spec"]["egress"]
    assert egress[2:] == [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "agentready"}
                    },
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "agentready-config"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 50052}],
        },
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tools"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8443}],
        },
    ]
    # Deprovisioning denies everything, the platform included.
    assert "egress" not in network_policy(spec, deny_all=True, platform=platform)["spec"]
    assert parse_platform_services("") == ()
    for bad in ("agentready-config:50052", "ns/app", "ns/app:0", "NS/app:1", "ns/app:99999"):
        with pytest.raises(ValueError, match="namespace"):
            parse_platform_services(bad)
