"""Keys as users (ris.runtime.tenancy, ris.api.keys): named keys in the config, who a key is,
the ownership rule, and the engine applying it to every lookup and list, across a restart and
on a store from before tasks had owners. Fake workers, no process."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ris import messages as m
from ris.api.keys import FREE_WRONG_KEYS, KeyChecker, key_fingerprint
from ris.api.security import PRINCIPAL_STATE, Guard
from ris.config import ConfigError, NamedKey
from ris.config.load import parse_config
from ris.lanes import Lane
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import ImageRequest
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMRequest
from ris.runtime.snapshot import TaskWindow
from ris.runtime.store import TaskStore
from ris.runtime.tenancy import ANONYMOUS, Principal

from .fakes import IMAGE_ON, TWO_CORES, FakeClock, run, started_engine
from .guarded import ok, through

ALICE = Principal("alice", admin=False)
BOB = Principal("bob", admin=False)
ROOT = Principal("root", admin=True)
LANES = {"tts": {"cores": [0], "default_model": "e", "models": {"e": {"backend": "espeak"}}}}


def keys_config(keys: list[Any]) -> Any:
    return parse_config({"server": {"api_keys": keys}, "lanes": LANES}, TWO_CORES)


# ----- config ---------------------------------------------------------------------------------


def test_named_keys_are_users_unless_admin_and_plain_strings_stay_valid() -> None:
    cfg = keys_config(
        ["plain-secret", {"name": "alice", "key": "a-secret"}, {"name": "ops", "key": "o", "role": "admin"}]
    )
    plain, alice, ops = cfg.server.api_keys
    assert plain == "plain-secret"
    assert isinstance(alice, NamedKey) and (alice.name, alice.role) == ("alice", "user")
    assert isinstance(ops, NamedKey) and ops.role == "admin"
    assert "a-secret" not in repr(alice) and "a-secret" not in str(cfg.server)


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        (["same-secret", {"name": "alice", "key": "same-secret"}], "entry 1 repeats an earlier key"),
        ([{"name": "alice", "key": "k1"}, {"name": "alice", "key": "k2"}], "the name 'alice' is given twice"),
        (
            [{"name": "alice", "key": "k1", "role": "root"}],
            "api_keys.0.role: Input should be 'user' or 'admin'",
        ),
        ([{"name": "a:b", "key": "k1"}], "api_keys.0.name: String should match pattern"),
        ([{"name": "alice"}], "api_keys.0.key: Field required"),
        ([{"name": "alice", "key": ""}], "api_keys.0.key: String should have at least 1 character"),
        ([""], "entry 0 is empty"),
    ],
)
def test_bad_keys_are_refused_with_what_is_allowed_and_never_quoted(keys: list[Any], said: str) -> None:
    with pytest.raises(ConfigError) as e:
        keys_config(keys)
    message = str(e.value)
    assert said in message
    for secret in ("same-secret", "k1", "k2"):
        assert secret not in message


def test_a_refused_server_section_never_quotes_its_keys() -> None:
    """A check of the whole section (both ports the same) named the section's value, keys
    included."""
    server = {"api_keys": ["TOPSECRETKEY0001", {"name": "alice", "key": "a-secret"}], "port": 19100}
    with pytest.raises(ConfigError) as e:
        parse_config({"server": {**server, "ollama_port": 19100}, "lanes": LANES}, TWO_CORES)
    message = str(e.value)
    assert "ollama_port" in message and "TOPSECRETKEY0001" not in message and "a-secret" not in message


# ----- who a key is ---------------------------------------------------------------------------


def test_a_named_key_is_its_name_and_role_and_a_plain_key_an_admin_fingerprint() -> None:
    keys = KeyChecker(["plain-secret", NamedKey(name="alice", key="a-secret")], FakeClock())
    assert keys.check("10.0.0.1", "a-secret").principal == ALICE
    plain = keys.check("10.0.0.1", "plain-secret").principal
    assert plain == Principal("key:" + key_fingerprint("plain-secret")[:16], admin=True)
    assert keys.check("10.0.0.1", "wrong").principal is None


def test_a_known_key_still_says_who_it_is_while_its_address_is_locked_out() -> None:
    keys = KeyChecker([NamedKey(name="alice", key="a-secret")], FakeClock())
    assert keys.check("10.0.0.1", "a-secret").ok
    for i in range(FREE_WRONG_KEYS):
        keys.check("10.0.0.1", f"guess{i}")
    assert keys.check("10.0.0.1", "guess").retry_after_s is not None  # locked out
    assert keys.check("10.0.0.1", "a-secret").principal == ALICE  # known: passes, and is alice


def test_the_guard_leaves_who_the_key_is_for_the_routes() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["state"][PRINCIPAL_STATE])
        await ok(scope, receive, send)

    guard = Guard(app, keys=KeyChecker([NamedKey(name="bob", key="b-secret")], FakeClock()))
    status, _ = through(
        guard, "GET", "/api/tasks", [("host", "localhost"), ("authorization", "Bearer b-secret")]
    )
    assert status == 200 and seen == [BOB]


# ----- the rule -------------------------------------------------------------------------------


def test_a_user_sees_its_own_tasks_an_admin_every_task() -> None:
    assert ALICE.sees("alice") and not ALICE.sees("bob") and not ALICE.sees(None)
    assert ROOT.sees("alice") and ROOT.sees(None)
    assert ANONYMOUS.admin and ANONYMOUS.sees("alice")  # no key configured: as before owners


# ----- the engine -----------------------------------------------------------------------------


@run
async def test_another_users_task_is_not_found_listed_or_shown_and_an_admin_sees_all(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        mine = eng.submit(LLM, "m", LLMRequest(prompt="alice's"), owner="alice")  # runs
        queued = eng.submit(LLM, "m", LLMRequest(prompt="alice's too"), owner="alice")
        theirs = eng.submit(LLM, "m", LLMRequest(prompt="bob's"), owner="bob")
        for h in (mine, queued):
            assert eng.lookup(h.task_id, BOB) is None
            assert eng.lookup(h.task_id, ALICE) is not None and eng.lookup(h.task_id, ROOT) is not None
        assert [v.id for v in eng.tasks(viewer=BOB)] == [theirs.task_id]
        assert {v.id for v in eng.tasks(viewer=ROOT)} == {mine.task_id, queued.task_id, theirs.task_id}
        assert eng.lookup(theirs.task_id, BOB).owner == "bob"  # type: ignore[union-attr]
        snap = eng.snapshot(TaskWindow(), BOB)
        assert snap.tasks is not None
        assert [v.id for v in (*snap.tasks.queued, *snap.tasks.running)] == [theirs.task_id]
        workers[Lane.LLM].deliver(m.TaskError(mine.task_id, "backend_error", "ended"))
        snap = eng.snapshot(TaskWindow(), BOB)
        assert snap.tasks is not None and snap.tasks.recent == ()
        # The lanes' figures are everyone's (no task in them): the same for both.
        assert snap.lanes == eng.snapshot(TaskWindow(), ROOT).lanes


@run
async def test_a_durable_tasks_owner_survives_a_restart_and_filters_the_stored_list(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, _, _):
        alices = [eng.submit(IMAGE, "i", ImageRequest(prompt=f"a{i}"), owner="alice") for i in range(3)]
        bobs = eng.submit(IMAGE, "i", ImageRequest(prompt="b"), owner="bob")

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng2, _, _):
        assert eng2.lookup(bobs.task_id, ALICE) is None
        resumed = eng2.lookup(alices[0].task_id, ALICE)
        assert resumed is not None and resumed.state == "queued" and resumed.owner == "alice"
        # Filtered before the limit: a page of Bob's is his own, not the newest of anyone's.
        assert [v.id for v in eng2.durable_tasks(Lane.IMAGE, limit=1, viewer=BOB)] == [bobs.task_id]
        assert len(eng2.durable_tasks(Lane.IMAGE, viewer=ALICE)) == 3
        assert len(eng2.durable_tasks(Lane.IMAGE, viewer=ROOT)) == 4


@run
async def test_a_resumed_durable_task_keeps_its_client_and_its_share_of_the_slots(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, _, _):
        sent = eng.submit(IMAGE, "i", ImageRequest(prompt="a"), client="10.0.0.7", owner="alice")

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng2, _, _):
        assert eng2.durable is not None
        stored = eng2.durable.store.get(sent.task_id)
        assert stored is not None and stored.client == "10.0.0.7"
        resumed = eng2._scheduler.get(sent.task_id)  # noqa: SLF001 - the spec the share is read from
        assert resumed is not None and (resumed.spec.client, resumed.spec.costly) == ("10.0.0.7", False)
        eng2.cancel(sent.task_id)
        eng2.durable.store.flush()
        ended = eng2.durable.store.get(sent.task_id)
        assert ended is not None and ended.state == "cancelled" and ended.client is None  # not kept


OLD_SCHEMA = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, lane TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL,
    priority INTEGER NOT NULL, request TEXT NOT NULL, submitted_at REAL NOT NULL,
    started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT, error_message TEXT, result TEXT
);
"""


def test_a_store_from_before_owners_is_migrated_and_its_tasks_are_the_anonymous_owners(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO tasks (id, lane, model, state, priority, request, submitted_at) "
        "VALUES ('a' , 'image', 'i', 'queued', 0, '{}', 1.0)"
    )
    db.commit()
    db.close()
    store = TaskStore(path)
    try:
        old = store.get("a")
        assert old is not None and old.owner is None
        assert ROOT.sees(old.owner) and not ALICE.sees(old.owner)  # an admin's to see
        assert old.client is None  # from before clients were kept: no client's share
        assert old.deadline is None and old.on_restart is None  # resumed with the lane's timeout
        store.add("b", "image", "i", 0, {}, 2.0, owner="alice").result()  # written off the loop
        assert [t.id for t in store.recent(owner="alice", all_owners=False)] == ["b"]
        assert [t.id for t in store.recent(owner=None, all_owners=False)] == ["a"]
    finally:
        store.close()
    TaskStore(path).close()  # opened again: nothing left to migrate


@run
async def test_an_llm_task_reaches_its_worker_scoped_to_its_owner(tmp_path: Path) -> None:
    """The LLM worker reuses cached prompt state only within one scope (llama_batch): the
    owner's, which the engine sets whatever the request said; None without keys, as before."""
    async with started_engine(tmp_path) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready(slots=3)
        eng.submit(LLM, "m", LLMRequest(prompt="alice's"), owner="alice")
        eng.submit(LLM, "m", LLMRequest(prompt="posing", cache_scope="alice"), owner="bob")
        eng.submit(LLM, "m", LLMRequest(prompt="no keys"))
        assert [r.request.cache_scope for r in llm.runs] == ["alice", "bob", None]  # type: ignore[attr-defined]


@run
async def test_a_task_the_retention_policy_removed_is_gone_to_its_owner_and_unknown_to_others(
    tmp_path: Path,
) -> None:
    """A client polling a picture the sweep had removed got 404 not_found, as for an id never
    seen: now 410 task_expired saying when and why, to whoever may see the task; another
    user still learns nothing of it."""

    import httpx

    from ris.api.app import create_app
    from ris.runtime.store import StoredTask

    gone = "e" * 32
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, _, _):
        assert eng.durable is not None and eng.retention is not None
        long_ago = eng.wall_clock() - 1000 * 3600  # the engine's wall clock (a fake one here)
        record = StoredTask(
            gone, "image", "i", "succeeded", 0, {}, long_ago, long_ago, long_ago, 1, None, None, None
        )
        eng.durable.store.keep(dataclasses.replace(record, owner="alice")).result()
        assert eng.retention.sweep().expired == 1
        assert eng.lookup(gone, ALICE) is None
        removal = eng.removal(gone, ALICE)
        assert removal is not None and "max_age_h" in removal.why
        assert eng.removal(gone, BOB) is None and eng.removal(gone, ROOT) is not None
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for path in (f"/api/tasks/{gone}", f"/api/image/progress/{gone}", f"/api/image/result/{gone}"):
                r = await client.get(path)  # no keys: the anonymous admin
                assert r.status_code == 410 and r.json()["error"]["code"] == "task_expired", (path, r.text)
                assert "retention policy" in r.json()["error"]["message"]
            assert (await client.get(f"/api/tasks/{'f' * 32}")).status_code == 404  # never was
