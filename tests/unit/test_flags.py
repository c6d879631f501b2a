"""Feature-flag evaluation in the SDK: the contract's rule, stable across pods."""

from __future__ import annotations

from collections import Counter

from agentready import evaluate_flag
from agentready.config.v1 import config_pb2
from agentready.flags import bucket
from google.protobuf import struct_pb2

SUBJECTS = [f"user-{i}" for i in range(10_000)]


def flag(**fields: object) -> config_pb2.FeatureFlag:
    return config_pb2.FeatureFlag(**fields)  # type: ignore[arg-type]


def on_for(feature: config_pb2.FeatureFlag) -> set[str]:
    return {s for s in SUBJECTS if evaluate_flag(feature, s, service="ai", key="new-model").enabled}


def test_the_bucket_of_a_subject_never_changes() -> None:
    # Pinned: every pod, SDK version and language must place subjects alike.
    assert bucket("ai/new-model", "user-42", 10_000) == 6_710
    assert bucket("ai/new-model", "user-43", 10_000) == 2_735


def test_disabled_deny_and_allow_lists_come_first() -> None:
    assert on_for(flag(enabled=False, allow_list=["user-1"])) == set()
    both = flag(
        enabled=True, rollout_percent=0, allow_list=["user-1", "user-2"], deny_list=["user-2"]
    )
    assert on_for(both) == {"user-1"}
    result = evaluate_flag(both, "user-2", service="ai", key="new-model")
    assert (result.enabled, result.reason) == (False, "denied")


def test_rollout_takes_its_share_and_only_grows() -> None:
    assert len(on_for(flag(enabled=True))) == len(SUBJECTS)  # unset = everyone
    ten = on_for(flag(enabled=True, rollout_percent=10))
    twenty = on_for(flag(enabled=True, rollout_percent=20))
    assert 900 <= len(ten) <= 1100
    assert 1800 <= len(twenty) <= 2200
    assert ten <= twenty  # raising the percentage only adds subjects


def test_the_salt_decides_who_is_in() -> None:
    default = on_for(flag(enabled=True, rollout_percent=10))
    salted = on_for(flag(enabled=True, rollout_percent=10, salt="reshuffled"))
    assert len(default & salted) < len(default) / 2


def test_variants_follow_their_weights_and_off_subjects_get_the_default() -> None:
    payload = struct_pb2.Value(string_value="#00f")
    feature = flag(
        enabled=True,
        rollout_percent=50,
        default_variant="control",
        variants=[
            config_pb2.FlagVariant(name="control", weight=0),
            config_pb2.FlagVariant(name="blue", weight=3, value=payload),
            config_pb2.FlagVariant(name="green", weight=1),
        ],
    )
    results = [evaluate_flag(feature, s, service="ai", key="new-model") for s in SUBJECTS]
    chosen = Counter(r.variant for r in results if r.enabled)
    assert set(chosen) == {"blue", "green"}
    assert 2.5 < chosen["blue"] / chosen["green"] < 3.5
    assert {r.variant for r in results if not r.enabled} == {"control"}
    assert next(r.value for r in results if r.variant == "blue") == "#00f"
