"""WriteMemo: what a ConfigService replica remembers of an organization's write state."""

from __future__ import annotations

import datetime as dt

import pytest

from config_service.adapters import postgres as pg
from config_service.domain.model import Change, Commit, Entry
from config_service.domain.schema import KeySchema, ServiceSchema
from config_service.domain.values import ConfigValue, ValueType
from config_service.service_layer import memo as memo_module
from config_service.service_layer.memo import WriteMemo

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
A, B = ("ai", "a"), ("ai", "b")
SCHEMA = ServiceSchema((KeySchema("a", ValueType.INT),))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry(key: tuple[str, str], number: int, revision: int, by: str = "someone") -> Entry:
    return Entry(key[0], key[1], ConfigValue(ValueType.INT, number), revision, NOW, by)


def state(
    revision: int, *entries: Entry, schema: bool = False, incarnation: int | None = 7
) -> pg.WriteState:
    return pg.WriteState(
        revision,
        0,
        {(e.service, e.key): e for e in entries},
        {"ai": SCHEMA} if schema else {},
        None,
        {"ai": 3} if schema else {},
        incarnation,
    )


def change(key: tuple[str, str], old: int | None, new: int | None, revision: int) -> Change:
    return Change(
        revision=revision,
        seq=0,
        service=key[0],
        key=key[1],
        kind="set" if new is not None else "delete",
        old_value=ConfigValue(ValueType.INT, old) if old is not None else None,
        new_value=ConfigValue(ValueType.INT, new) if new is not None else None,
        actor="me",
        reason="",
        request_id="",
        created_at=NOW,
    )


def commit(*changes: Change) -> Commit:
    after = (c.entry() for c in changes)
    return Commit(changes[0].revision, changes, tuple(e for e in after if e is not None))


def test_nothing_is_known_of_an_organization_never_read() -> None:
    assert WriteMemo().state("acme", [A], {"ai"}) is None


def test_a_read_is_remembered_with_the_keys_it_found_unset() -> None:
    memo = WriteMemo()
    memo.remember("acme", state(4, entry(A, 1, 2), schema=True), [A, B], {"ai"})
    known = memo.state("acme", [A, B], {"ai"})
    assert known == pg.WriteState(4, 0, {A: entry(A, 1, 2)}, {"ai": SCHEMA}, None, {"ai": 3}, 7)
    # A key or a schema never read is not known: the write reads.
    assert memo.state("acme", [("ai", "c")], {"ai"}) is None
    assert memo.state("acme", [A], {"other"}) is None


def test_a_commit_moves_the_memory_to_its_revision() -> None:
    memo = WriteMemo()
    read = state(4, entry(A, 1, 2), entry(B, 5, 3))
    memo.remember("acme", read, [A, B], {"ai"})  # an earlier write of both keys read them
    memo.committed("acme", read, [A], {"ai"}, commit(change(A, 1, 2, 5)))
    known = memo.state("acme", [A, B], {"ai"})
    assert known is not None
    assert known.revision == 5
    assert known.entries == {A: entry(A, 2, 5, by="me"), B: entry(B, 5, 3)}


def test_a_delete_is_remembered_as_a_key_not_set() -> None:
    memo = WriteMemo()
    memo.committed("acme", state(4, entry(A, 1, 2)), [A], set(), commit(change(A, 1, None, 5)))
    known = memo.state("acme", [A], set())
    assert known is not None
    assert known.revision == 5
    assert known.entries == {}


def test_a_read_at_another_revision_replaces_what_was_known() -> None:
    memo = WriteMemo()
    memo.remember("acme", state(4, entry(A, 1, 2)), [A], set())
    memo.remember("acme", state(6, entry(B, 9, 6)), [B], set())
    assert memo.state("acme", [A], set()) is None  # known at revision 4 only
    known = memo.state("acme", [B], set())
    assert known is not None
    assert known.revision == 6


def test_another_incarnation_replaces_what_was_known() -> None:
    memo = WriteMemo()
    memo.remember("acme", state(4, entry(A, 1, 2)), [A], set())
    # Purged and written again up to the same revision: another life.
    memo.remember("acme", state(4, entry(B, 9, 4), incarnation=8), [B], set())
    assert memo.state("acme", [A], set()) is None
    known = memo.state("acme", [B], set())
    assert known is not None
    assert known.incarnation == 8


def test_an_organization_read_before_it_had_a_row_is_not_written_from_memory() -> None:
    memo = WriteMemo()
    memo.committed("acme", state(0, incarnation=None), [A], set(), commit(change(A, None, 1, 1)))
    assert memo.state("acme", [A], set()) is None  # its next write reads (and learns it)
    memo.remember("acme", state(1, entry(A, 1, 1)), [A], set())
    assert memo.state("acme", [A], set()) is not None


def test_a_memory_is_trusted_for_a_while_after_it_was_confirmed() -> None:
    clock = Clock()
    memo = WriteMemo(seconds=1.0, clock=clock)
    memo.remember("acme", state(4, entry(A, 1, 2)), [A], set())
    clock.now += 0.9
    memo.committed("acme", state(4, entry(A, 1, 2)), [A], set(), commit(change(A, 1, 2, 5)))
    clock.now += 0.9  # 1.8 s after the read, 0.9 s after the commit
    assert memo.state("acme", [A], set()) is not None
    clock.now += 0.2
    assert memo.state("acme", [A], set()) is None


def test_the_least_recently_written_organizations_are_forgotten_first() -> None:
    memo = WriteMemo(capacity=2)
    for organization in ("one", "two"):
        memo.remember(organization, state(1, entry(A, 1, 1)), [A], set())
    memo.remember("one", state(1, entry(A, 1, 1)), [A], set())  # written again
    memo.remember("three", state(1, entry(A, 1, 1)), [A], set())
    assert memo.state("two", [A], set()) is None
    assert memo.state("one", [A], set()) is not None
    assert memo.state("three", [A], set()) is not None


def test_an_organization_with_many_keys_keeps_those_of_its_latest_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memo_module, "MEMO_KEYS", 2)
    memo = WriteMemo()
    keys = [("ai", f"k{n}") for n in range(3)]
    memo.remember("acme", state(1), keys[:2], set())
    memo.committed("acme", state(1), [keys[2]], set(), commit(change(keys[2], None, 1, 2)))
    assert memo.state("acme", [keys[2]], set()) is not None
    assert memo.state("acme", [keys[0]], set()) is None


def test_forgetting_an_organization() -> None:
    memo = WriteMemo()
    memo.remember("acme", state(1, entry(A, 1, 1)), [A], set())
    memo.forget("acme")
    memo.forget("never-seen")
    assert memo.state("acme", [A], set()) is None


def test_writes_in_flight_are_counted_per_organization() -> None:
    memo = WriteMemo()
    with memo.writing("acme") as alone:
        assert alone
        with memo.writing("acme") as second_alone, memo.writing("other") as other_alone:
            assert not second_alone
            assert other_alone
    with memo.writing("acme") as alone:
        assert alone
