"""The admission policy that confines the Provisioner (security review finding 6): its
CEL expressions, parsed and evaluated with a CEL implementation against requests the
Provisioner makes (allowed) and requests a stolen Provisioner token could make
(refused), the way the API server evaluates a ValidatingAdmissionPolicy: the policy
applies when every match condition is true, and refuses when any validation is false."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from celpy.adapter import json_to_cel

from provisioner.domain import manifests
from provisioner.domain.model import Quota, TenantSpec

POLICY_FILE = (
    Path(__file__).parents[2] / "deploy" / "base" / "provisioner" / "admission-policy.yaml"
)
PROVISIONER = "system:serviceaccount:agentready:agentready-provisioner"
RESOURCES = {
    "Namespace": ("", "namespaces"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "ResourceQuota": ("", "resourcequotas"),
    "LimitRange": ("", "limitranges"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
}


def policy() -> dict[str, Any]:
    (found,) = [
        d
        for d in yaml.safe_load_all(POLICY_FILE.read_text())
        if d and d["kind"] == "ValidatingAdmissionPolicy"
    ]
    return dict(found)


def evaluate(expression: str, variables: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    activation = {name: json_to_cel(value) for name, value in variables.items()}
    result = program.evaluate(activation)
    # An evaluation error is no answer: the tests want each expression to decide.
    assert isinstance(result, celpy.celtypes.BoolType), (expression, result)
    return bool(result)


def admitted(variables: dict[str, Any]) -> bool:
    """What the API server decides: not applicable, or every validation holds."""
    spec = policy()["spec"]
    if not all(evaluate(c["expression"], variables) for c in spec["matchConditions"]):
        return True
    return all(evaluate(v["expression"], variables) for v in spec["validations"])


def request(
    operation: str,
    obj: dict[str, Any] | None,
    *,
    old: dict[str, Any] | None = None,
    namespace_object: dict[str, Any] | None = None,
    user: str = PROVISIONER,
) -> dict[str, Any]:
    target = obj or old or {}
    kind = target["kind"]
    group, resource = RESOURCES[kind]
    meta = target.get("metadata") or {}
    return {
        "request": {
            "operation": operation,
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "resource": {"group": group, "resource": resource},
            "userInfo": {"username": user},
        },
        "object": obj,
        "oldObject": old,
        "namespaceObject": namespace_object,
    }


SPEC = TenantSpec("acme", ("ada@example.com",), Quota(), {})
OURS = manifests.namespace(SPEC)


def foreign(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {}}}


def test_the_policy_binds_and_covers_every_kind_the_provisioner_writes() -> None:
    spec = policy()["spec"]
    covered = {
        resource
        for rule in spec["matchConstraints"]["resourceRules"]
        for resource in rule["resources"]
    }
    assert covered == {resource for _, resource in RESOURCES.values()}
    for validation in spec["validations"]:
        env = celpy.Environment()
        env.compile(validation["expression"])  # every expression parses


@pytest.mark.parametrize(
    "variables",
    [
        request("CREATE", OURS),
        request("UPDATE", manifests.namespace(SPEC, isolation_ready=True), old=OURS),
        request("DELETE", None, old=OURS),
        *(
            request("CREATE", guard, namespace_object=OURS)
            for guard in manifests.guard_objects(SPEC).values()
        ),
        # Someone else's requests are not this policy's business.
        request("DELETE", None, old=foreign("kube-system"), user="kubernetes-admin"),
    ],
)
def test_what_the_provisioner_does_is_admitted(variables: dict[str, Any]) -> None:
    assert admitted(variables)


def _guard(kind: str, namespace: str) -> dict[str, Any]:
    (guard,) = [g for g in manifests.guard_objects(SPEC).values() if g["kind"] == kind]
    return {**guard, "metadata": {**guard["metadata"], "namespace": namespace}}


@pytest.mark.parametrize(
    ("name", "variables"),
    [
        ("create kube-system", request("CREATE", foreign("kube-system"))),
        ("delete kube-system", request("DELETE", None, old=foreign("kube-system"))),
        (
            "delete another team's org-* namespace",
            request("DELETE", None, old=foreign("org-payroll")),
        ),
        (
            "take over an org-* namespace by labelling it",
            request(
                "UPDATE",
                manifests.namespace(TenantSpec("payroll", ("x",), Quota(), {})),
                old=foreign("org-payroll"),
            ),
        ),
        (
            "a namespace without the labels",
            request("CREATE", foreign("org-acme")),
        ),
        (
            "a namespace labelled for another organization",
            request(
                "CREATE",
                {**OURS, "metadata": {**OURS["metadata"], "name": "org-other"}},
            ),
        ),
        (
            "bind admin in kube-system",
            request(
                "CREATE",
                _guard("RoleBinding", "kube-system"),
                namespace_object=foreign("kube-system"),
            ),
        ),
        (
            "bind admin in an org-* namespace it did not create",
            request(
                "CREATE",
                _guard("RoleBinding", "org-payroll"),
                namespace_object=foreign("org-payroll"),
            ),
        ),
        (
            "open a network policy elsewhere",
            request(
                "UPDATE",
                _guard("NetworkPolicy", "default"),
                old=_guard("NetworkPolicy", "default"),
                namespace_object=foreign("default"),
            ),
        ),
    ],
)
def test_what_a_stolen_provisioner_token_tries_is_refused(
    name: str, variables: dict[str, Any]
) -> None:
    assert not admitted(variables), name
