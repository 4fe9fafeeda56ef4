"""Shared scales through the real parts: PostgreSQL, Mosquitto, the bridge and the API.

A household shares one scale: the owner invites with a one-time code, members join and
leave; each weighing lands with the person it is clearly theirs, or is held, sealed under the
device's key, for the users to claim or dismiss; held weighings go after 30 days, with the
device, or with its owner's erasure; and every access to them is in the users' access logs.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.limits import Limits
from api.openapi import PATHS
from api.requests import ApiDeps
from api.tokens import TokenService
from broker_bridge.bridge import Bridge
from devices.ca import new_key
from devices.household import INVITATION_VALIDITY
from devices.registry import PATIENT_FAILURES
from firmware_sim.models import Scale
from healthiot.services import Core
from storage.errors import IntegrityError, KeyUnavailable
from storage.held import HeldWeighing, device_owner, open_held
from storage.maintenance import Maintenance, RetentionPolicy
from storage.rollups import Rollups
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from storage.unclaimed import Unclaimed
from tests.conftest import BrokerAddress, Pki, new_device, wait_until
from tests.integration.test_device_registry import provisioned
from tests.integration.test_patient_api import PASSWORD, Account, code, register

DAY = dt.timedelta(days=1)


@pytest.fixture
async def api(core: Core) -> AsyncIterator[TestClient[Any, Any]]:
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=1000, request_burst=1000)))
    async with TestClient(TestServer(app)) as client:
        yield client


def _check(path: str, method: str, status: str, answer: Any) -> None:
    """The answer is what the OpenAPI document promises."""
    schema = PATHS[path][method]["responses"][status]["content"]["application/json"]["schema"]
    jsonschema_rs.validate(schema, answer)


async def _paired_scale(api: TestClient[Any, Any], core: Core, pki: Pki,
                        owner: Account) -> str:
    serial = f"S-{uuid.uuid4().hex[:8]}"
    device_id, pairing_code, _ = await provisioned(core, pki.ca, serial, model="scale")
    resp = await api.post("/v1/me/devices/pair", headers=owner.auth(),
                          json={"serial": serial, "pairing_code": pairing_code})
    assert resp.status == 201, await resp.text()
    return device_id


async def _invite(api: TestClient[Any, Any], device_id: str, owner: Account) -> str:
    resp = await api.post(f"/v1/me/devices/{device_id}/invitations", headers=owner.auth())
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    _check("/v1/me/devices/{device_id}/invitations", "post", "201", body)
    return str(body["code"])


async def _join(api: TestClient[Any, Any], member: Account, invitation: str) -> Any:
    resp = await api.post("/v1/me/devices/join", headers=member.auth(),
                          json={"code": invitation})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _household(api: TestClient[Any, Any], core: Core, pki: Pki, owner: str,
                     *members: str) -> tuple[str, Account, list[Account]]:
    """A scale paired by ``owner``, shared with ``members``: (device id, owner, members)."""
    alice = await register(api, owner)
    device_id = await _paired_scale(api, core, pki, alice)
    joined = []
    for name in members:
        account = await register(api, name)
        await _join(api, account, await _invite(api, device_id, alice))
        joined.append(account)
    return device_id, alice, joined


async def _hold(core: Core, device_id: str, *weighings: tuple[dt.datetime, float],
                seq: int = 1, received: dt.datetime | None = None) -> None:
    """Weighings held as the bridge holds them: through the store, in its transaction."""
    await core.store.ingest([MessageIn(
        device_id, seq, received or dt.datetime.now(dt.UTC), [], 0,
        held=[HeldWeighing(at, "ambiguous", {"body_weight": (kg, 0), "body_fat": (22.5, 0)})
              for at, kg in weighings])])


async def _seed_weight(core: Core, patient: str, kg: float, at: dt.datetime) -> None:
    """A weight the patient had before (from another scale of theirs)."""
    ms = int(at.timestamp() * 1000)
    await core.store.ingest([MessageIn(
        f"seed-{patient[:8]}", ms, at, [SegmentIn(uuid.UUID(patient), "body_weight", Samples(
            np.array([ms], np.int64), np.array([kg]), np.array([0], np.uint8)))], 0)])


async def _unclaimed(api: TestClient[Any, Any], device_id: str, who: Account) -> list[Any]:
    resp = await api.get(f"/v1/me/devices/{device_id}/unclaimed", headers=who.auth())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    _check("/v1/me/devices/{device_id}/unclaimed", "get", "200", body)
    return list(body["readings"])


async def _weights(core: Core, who: Account) -> dict[int, float]:
    now = dt.datetime.now(dt.UTC)
    series = await core.store.read_series(uuid.UUID(who.id), "body_weight", now - 30 * DAY,
                                          now + DAY)
    return dict(zip(series.t_ms.tolist(), series.value.tolist(), strict=True))


# -- membership ---------------------------------------------------------------------------

async def test_owner_invites_member_joins_lists_and_leaves(api: TestClient[Any, Any],
                                                          core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.home", "bob.home")
    resp = await api.get("/v1/me/devices", headers=bob.auth())
    [listed] = (await resp.json())["devices"]
    assert (listed["id"], listed["role"], listed["model"]) == (device_id, "member", "scale")
    _check("/v1/me/devices", "get", "200", {"devices": [listed]})
    resp = await api.get("/v1/me/devices", headers=alice.auth())
    assert [d["role"] for d in (await resp.json())["devices"]] == ["owner"]

    resp = await api.get(f"/v1/me/devices/{device_id}/users", headers=bob.auth())
    users = await resp.json()
    _check("/v1/me/devices/{device_id}/users", "get", "200", users)
    assert [(u["username"], u["role"], u["me"]) for u in users["users"]] == [
        ("alice.home", "owner", False), ("bob.home", "member", True)]

    # A member neither invites nor removes the owner; the owner does not "leave".
    resp = await api.post(f"/v1/me/devices/{device_id}/invitations", headers=bob.auth())
    assert resp.status == 403 and resp.content_type == "application/problem+json"
    resp = await api.delete(f"/v1/me/devices/{device_id}/users/{alice.id}", headers=bob.auth())
    assert resp.status == 403
    resp = await api.delete(f"/v1/me/devices/{device_id}/users/me", headers=alice.auth())
    assert resp.status == 409
    # Nor does a member unpair the owner's scale: for them it is not a device to revoke.
    resp = await api.delete(f"/v1/me/devices/{device_id}", headers=bob.auth())
    assert resp.status == 404
    assert (await core.registry.get(device_id)).state == "paired"

    resp = await api.delete(f"/v1/me/devices/{device_id}/users/me", headers=bob.auth())
    assert resp.status == 204
    resp = await api.get("/v1/me/devices", headers=bob.auth())
    assert (await resp.json())["devices"] == []
    resp = await api.get(f"/v1/me/devices/{device_id}/users", headers=bob.auth())
    assert resp.status == 404

    await _join(api, bob, await _invite(api, device_id, alice))
    resp = await api.delete(f"/v1/me/devices/{device_id}/users/{bob.id}", headers=alice.auth())
    assert resp.status == 204
    assert await core.registry.users([device_id]) == {device_id: [uuid.UUID(alice.id)]}
    # Both see every change to who uses the scale in their access log.
    log = await core.pool.fetch(
        "SELECT actor, resource, outcome FROM audit_log WHERE patient_id = $1"
        " AND resource LIKE $2 || '/users%' AND action = 'device' ORDER BY id",
        uuid.UUID(alice.id), "device/" + await core.pool.fetchval(  # by reference
            "SELECT audit_ref FROM devices WHERE id = $1", device_id))
    assert [(r["actor"], r["outcome"]) for r in log] == [
        (f"patient:{bob.id}", "joined"), (f"patient:{alice.id}", "refused"),
        (f"patient:{bob.id}", "left"),
        (f"patient:{bob.id}", "joined"), (f"patient:{alice.id}", "removed")]


async def test_only_scales_are_shared_and_a_stranger_sees_nothing(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.solo", "bob.solo")
    carol = await register(api, "carol.stranger")
    watch_id, pairing_code, _ = await provisioned(core, pki.ca, "W-77", model="watch")
    await api.post("/v1/me/devices/pair", headers=alice.auth(),
                   json={"serial": "W-77", "pairing_code": pairing_code})
    resp = await api.post(f"/v1/me/devices/{watch_id}/invitations", headers=alice.auth())
    assert resp.status == 409
    reading = uuid.uuid4()
    # Carol, a stranger, gets the answer for a device that does not exist, on every route.
    for method, route in (
            ("POST", f"/v1/me/devices/{device_id}/invitations"),
            ("GET", f"/v1/me/devices/{device_id}/users"),
            ("DELETE", f"/v1/me/devices/{device_id}/users/{bob.id}"),
            ("DELETE", f"/v1/me/devices/{device_id}/users/me"),
            ("GET", f"/v1/me/devices/{device_id}/unclaimed"),
            ("POST", f"/v1/me/devices/{device_id}/unclaimed/{reading}/claim"),
            ("POST", f"/v1/me/devices/{device_id}/unclaimed/{reading}/dismiss")):
        resp = await api.request(method, route, headers=carol.auth())
        missing = await api.request(method, route.replace(device_id, "scale-000000000000"),
                                    headers=carol.auth())
        assert resp.status == missing.status == 404, (method, route)
        assert (await resp.json())["detail"] == (await missing.json())["detail"]
    assert len((await core.registry.users([device_id]))[device_id]) == 2


async def test_household_routes_need_the_second_factor(api: TestClient[Any, Any],
                                                       core: Core, pki: Pki) -> None:
    device_id, _, _ = await _household(api, core, pki, "alice.2fa")
    resp = await api.post("/v1/auth/login", json={"username": "alice.2fa",
                                                  "password": PASSWORD})
    one_factor = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    reading = uuid.uuid4()
    for method, route, body in (
            ("POST", f"/v1/me/devices/{device_id}/invitations", None),
            ("POST", "/v1/me/devices/join", {"code": "ABCD-EFGH-JKMN-PQRS"}),
            ("GET", f"/v1/me/devices/{device_id}/users", None),
            ("DELETE", f"/v1/me/devices/{device_id}/users/me", None),
            ("GET", f"/v1/me/devices/{device_id}/unclaimed", None),
            ("POST", f"/v1/me/devices/{device_id}/unclaimed/{reading}/claim", None),
            ("POST", f"/v1/me/devices/{device_id}/unclaimed/{reading}/dismiss", None)):
        resp = await api.request(method, route, headers=one_factor, json=body)
        assert resp.status == 403, (method, route)
        resp = await api.request(method, route, json=body)
        assert resp.status == 401, (method, route)
    assert await core.pool.fetchval("SELECT count(*) FROM device_invitations") == 0


async def test_codes_are_one_time_expire_and_guessing_gets_429(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.codes", "bob.codes")
    carol, dave = await register(api, "carol.codes"), await register(api, "dave.codes")
    # Bob's code is spent: Carol cannot use it.
    used = await core.pool.fetchval("SELECT count(*) FROM device_invitations"
                                    " WHERE used_by = $1", uuid.UUID(bob.id))
    assert used == 1
    spare = await _invite(api, device_id, alice)
    await _join(api, carol, spare)
    resp = await api.post("/v1/me/devices/join", headers=dave.auth(), json={"code": spare})
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    # An expired code is refused with the same words.
    late = await _invite(api, device_id, alice)
    await core.pool.execute("UPDATE device_invitations SET expires_at = now() - interval '1s'"
                            " WHERE used_at IS NULL")
    resp = await api.post("/v1/me/devices/join", headers=dave.auth(), json={"code": late})
    assert resp.status == 422
    fresh = await _invite(api, device_id, alice)
    expires = await core.pool.fetchval(
        "SELECT expires_at - created_at FROM device_invitations WHERE used_at IS NULL"
        " AND expires_at > now()")
    assert expires == INVITATION_VALIDITY
    # Only a hash is stored; the code in clear is nowhere in the table.
    rows = await core.pool.fetch("SELECT * FROM device_invitations")
    assert all(fresh.encode() not in bytes(str(dict(r)), "utf-8") for r in rows)
    # Strict bodies: no extra fields (no choosing a role), no wrong types.
    for body in ({"code": fresh, "role": "owner"}, {"code": 7}, {}, {"code": "A" * 65}):
        resp = await api.post("/v1/me/devices/join", headers=dave.auth(), json=body)
        assert resp.status == 422, body
    # Wrong guesses share the pairing budget, and then even the right code waits.
    limit, window = PATIENT_FAILURES
    wrong = 2  # the spent and the expired code above
    for _ in range(limit - wrong):
        resp = await api.post("/v1/me/devices/join", headers=dave.auth(),
                              json={"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})
        assert resp.status == 422
    resp = await api.post("/v1/me/devices/join", headers=dave.auth(), json={"code": fresh})
    assert resp.status == 429
    assert 0 < int(resp.headers["Retry-After"]) <= window.total_seconds()
    # Dave's guesses throttle Dave only: the fresh code still works for Eve.
    eve = await register(api, "eve.codes")
    await _join(api, eve, fresh)
    outcomes = await core.pool.fetch(
        "SELECT outcome FROM audit_log WHERE patient_id = $1 AND resource = 'devices/join'"
        " ORDER BY id", uuid.UUID(dave.id))
    assert [r["outcome"] for r in outcomes] == ["refused"] * limit + ["throttled"]


# -- attribution over the broker and the bridge --------------------------------------------

async def _shared_scale(core: Core, pki: Pki, broker: BrokerAddress, directory: Path,
                        owner: uuid.UUID, people: list[float]) -> Scale:
    """A simulated scale that made its key, got its certificate and is paired to ``owner``."""
    return await new_device(core, pki, broker, directory, owner, Scale, interval_s=60.0,
                            people=people)


async def _weigh(core: Core, scale: Scale, count: int, start: float = 0.0) -> None:
    """``count`` more weighings a few seconds apart (the first ``start`` seconds ago),
    delivered and stored."""
    before = (await core.store.count_stored([scale.device_id]))[0]
    now = time.time() - start
    for i in range(count):
        scale.measure(now - 5 * (count - i + 1), now - 5 * (count - i))
    await scale.flush(timeout=20)
    assert scale.pending == 0

    async def stored() -> bool:
        return (await core.store.count_stored([scale.device_id]))[0] == before + count
    await wait_until(stored)


async def _join_scale(api: TestClient[Any, Any], owner: Account, member: Account,
                      device_id: str) -> None:
    await _join(api, member, await _invite(api, device_id, owner))


async def test_two_people_of_different_weights_each_get_their_own_weighings(
        api: TestClient[Any, Any], core: Core, pki: Pki, broker: BrokerAddress,
        bridge: Bridge, tmp_path: Path) -> None:
    alice, bob = await register(api, "alice.light"), await register(api, "bob.heavy")
    scale = await _shared_scale(core, pki, broker, tmp_path, uuid.UUID(alice.id),
                                people=[58.0, 84.0])
    await _join_scale(api, alice, bob, scale.device_id)
    week_ago = dt.datetime.now(dt.UTC) - 7 * DAY
    await _seed_weight(core, alice.id, 58.4, week_ago)
    await _seed_weight(core, bob.id, 83.5, week_ago)

    await _weigh(core, scale, 16)
    truth = {round(t * 1000): (who, kg) for t, who, kg in scale.ledger.weighed}
    assert {who for who, _ in truth.values()} == {0, 1}  # both stepped on it
    mine = {0: await _weights(core, alice), 1: await _weights(core, bob)}
    for t_ms, (who, kg) in truth.items():
        assert mine[who].get(t_ms) == kg, (t_ms, who)
        assert t_ms not in mine[1 - who]
    # Body fat follows the weight, to the same person.
    now = dt.datetime.now(dt.UTC)
    for who, account in ((0, alice), (1, bob)):
        fat = await core.store.read_series(uuid.UUID(account.id), "body_fat", now - DAY,
                                           now + DAY)
        assert sorted(fat.t_ms.tolist()) == sorted(
            t for t, (w, _) in truth.items() if w == who)
    assert await core.pool.fetchval("SELECT count(*) FROM unclaimed_readings") == 0
    assert bridge.stats.shared_scale_weighings["attributed"] == 16
    assert sum(bridge.stats.shared_scale_weighings.values()) == 16
    # The loss ledger counts every sample the scale sent: two per weighing.
    assert (await core.store.count_stored([scale.device_id]))[1] == 32


async def test_close_weights_are_held_seen_by_both_and_claimed_by_one(
        api: TestClient[Any, Any], core: Core, pki: Pki, broker: BrokerAddress,
        bridge: Bridge, tmp_path: Path) -> None:
    alice, bob = await register(api, "alice.twin"), await register(api, "bob.twin")
    carol = await register(api, "carol.outsider")
    scale = await _shared_scale(core, pki, broker, tmp_path, uuid.UUID(alice.id),
                                people=[70.2, 70.8])
    await _join_scale(api, alice, bob, scale.device_id)
    week_ago = dt.datetime.now(dt.UTC) - 7 * DAY
    await _seed_weight(core, alice.id, 70.0, week_ago)
    await _seed_weight(core, bob.id, 71.0, week_ago)

    await _weigh(core, scale, 1)
    [(t, _, kg)] = scale.ledger.weighed
    assert bridge.stats.shared_scale_weighings["ambiguous"] == 1
    [held] = await _unclaimed(api, scale.device_id, alice)
    assert await _unclaimed(api, scale.device_id, bob) == [held]
    assert held["reason"] == "ambiguous"
    assert round(dt.datetime.fromisoformat(held["measured_at"]).timestamp() * 1000) == round(
        t * 1000)
    assert held["values"]["body_weight"] == {"value": kg, "unit": "kg"}
    assert held["values"]["body_fat"]["unit"] == "%"
    # Stored sealed under the device's key, nobody's data yet; the value is not in clear.
    row = await core.pool.fetchrow("SELECT sealed FROM unclaimed_readings")
    assert str(kg).encode() not in bytes(row["sealed"])
    assert await _weights(core, alice) == {int(week_ago.timestamp() * 1000): 70.0}

    # A stranger can neither see nor claim it.
    route = f"/v1/me/devices/{scale.device_id}/unclaimed/{held['id']}"
    resp = await api.get(f"/v1/me/devices/{scale.device_id}/unclaimed", headers=carol.auth())
    assert resp.status == 404
    resp = await api.post(f"{route}/claim", headers=carol.auth())
    assert resp.status == 404
    resp = await api.post(f"{route}/claim", headers=bob.auth())
    assert resp.status == 200, await resp.text()
    _check("/v1/me/devices/{device_id}/unclaimed/{reading_id}/claim", "post", "200",
           await resp.json())
    # Bob's own data now, from that scale, like an attributed weighing; gone for Alice.
    assert (await _weights(core, bob))[round(t * 1000)] == kg
    now = dt.datetime.now(dt.UTC)
    by_source = await core.store.read_by_source(uuid.UUID(bob.id), "body_fat", now - DAY,
                                                now + DAY)
    assert list(by_source) == [scale.device_id]
    assert await _unclaimed(api, scale.device_id, alice) == []
    resp = await api.post(f"{route}/claim", headers=alice.auth())
    assert resp.status == 404
    assert round(t * 1000) not in await _weights(core, alice)

    # Alice sees, in her access log, that Bob read and claimed what was held on her scale.
    resp = await api.get("/v1/me/access-log", headers=alice.auth())
    entries = (await resp.json())["entries"]
    by_bob = [(e["action"], e["what"], e["outcome"], e["who"]) for e in entries
              if e["actor"] == f"patient:{bob.id}"]
    assert ("claim", f"device/{scale.device_id}/unclaimed/{held['id']}", "ok",
            "another user of a shared device") in by_bob
    assert ("read", f"device/{scale.device_id}/unclaimed", "ok",
            "another user of a shared device") in by_bob
    mine = [(e["action"], e["outcome"], e["who"]) for e in entries
            if e["what"] == f"device/{scale.device_id}/unclaimed"
            and e["actor"] == f"patient:{alice.id}"]
    assert mine and all(m == ("read", "ok", "you") for m in mine)
    # Carol's refused attempts are in her own log, and nobody else's.
    carol_log = await core.pool.fetch("SELECT patient_id, outcome FROM audit_log"
                                      " WHERE actor = $1 AND resource LIKE 'device/%'",
                                      f"patient:{carol.id}")
    assert carol_log and {(r["patient_id"], r["outcome"]) for r in carol_log} == {
        (uuid.UUID(carol.id), "refused")}
    assert (await core.audit.verify_chain()).intact


async def test_a_member_without_a_recent_weight_bootstraps_by_claiming(
        api: TestClient[Any, Any], core: Core, pki: Pki, broker: BrokerAddress,
        bridge: Bridge, tmp_path: Path) -> None:
    alice, bob = await register(api, "alice.first"), await register(api, "bob.new")
    # Only Bob steps on it in this test.
    scale = await _shared_scale(core, pki, broker, tmp_path, uuid.UUID(alice.id),
                                people=[90.0])
    await _seed_weight(core, alice.id, 60.0, dt.datetime.now(dt.UTC) - 2 * DAY)
    await _join_scale(api, alice, bob, scale.device_id)
    await _weigh(core, scale, 1, start=300)
    assert bridge.stats.shared_scale_weighings["no_recent_weight"] == 1
    [held] = await _unclaimed(api, scale.device_id, bob)
    assert held["reason"] == "no_recent_weight"
    resp = await api.post(f"/v1/me/devices/{scale.device_id}/unclaimed/{held['id']}/claim",
                          headers=bob.auth())
    assert resp.status == 200
    # Bob has a weight now: his next weighings are attributed to him.
    await _weigh(core, scale, 2)
    assert bridge.stats.shared_scale_weighings["attributed"] == 2
    assert len(await _weights(core, bob)) == 3
    assert list((await _weights(core, alice)).values()) == [60.0]  # only her seeded one


# -- held weighings: dismiss, tamper, retention, erasure -----------------------------------

async def test_dismissed_weighings_hide_for_one_and_go_once_all_dismissed(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.dis", "bob.dis")
    now = dt.datetime.now(dt.UTC)
    await _hold(core, device_id, (now - dt.timedelta(minutes=2), 70.1),
                (now - dt.timedelta(minutes=1), 70.6))
    first, second = await _unclaimed(api, device_id, alice)
    route = f"/v1/me/devices/{device_id}/unclaimed/{first['id']}/dismiss"
    resp = await api.post(route, headers=alice.auth())
    assert resp.status == 204
    assert [r["id"] for r in await _unclaimed(api, device_id, alice)] == [second["id"]]
    assert len(await _unclaimed(api, device_id, bob)) == 2
    resp = await api.post(route, headers=alice.auth())
    assert resp.status == 404  # dismissed once is enough; it is not hers to see any more
    resp = await api.post(route, headers=bob.auth())
    assert resp.status == 204
    assert await core.pool.fetchval("SELECT count(*) FROM unclaimed_readings WHERE id = $1",
                                    uuid.UUID(first["id"])) == 0
    # Bob dismisses the other one and leaves: Alice is the last who has not dismissed it.
    await api.post(f"/v1/me/devices/{device_id}/unclaimed/{second['id']}/dismiss",
                   headers=bob.auth())
    assert await core.pool.fetchval("SELECT count(*) FROM unclaimed_readings") == 1
    resp = await api.post(f"/v1/me/devices/{device_id}/unclaimed/{second['id']}/dismiss",
                          headers=alice.auth())
    assert resp.status == 204
    assert await core.pool.fetchval("SELECT count(*) FROM unclaimed_readings") == 0


async def test_a_member_who_joins_later_does_not_see_earlier_weighings(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.early", "bob.early")
    now = dt.datetime.now(dt.UTC)
    await _hold(core, device_id, (now - dt.timedelta(minutes=5), 70.0))
    carol = await register(api, "carol.late")
    await _join(api, carol, await _invite(api, device_id, alice))
    assert len(await _unclaimed(api, device_id, bob)) == 1
    assert await _unclaimed(api, device_id, carol) == []
    [held] = await _unclaimed(api, device_id, alice)
    resp = await api.post(f"/v1/me/devices/{device_id}/unclaimed/{held['id']}/claim",
                          headers=carol.auth())
    assert resp.status == 404


async def test_a_held_weighing_moved_to_another_row_does_not_open(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, _ = await _household(api, core, pki, "alice.tamper", "bob.tamper")
    now = dt.datetime.now(dt.UTC)
    await _hold(core, device_id, (now - dt.timedelta(minutes=2), 61.0),
                (now - dt.timedelta(minutes=1), 99.0))
    await core.pool.execute(
        "UPDATE unclaimed_readings SET sealed = (SELECT sealed FROM unclaimed_readings"
        " ORDER BY measured_at LIMIT 1)")
    with pytest.raises(IntegrityError):
        await Unclaimed(core.pool, core.keyring, core.store).visible(device_id,
                                                                     uuid.UUID(alice.id))


async def test_the_retention_job_purges_held_weighings_after_30_days(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, _ = await _household(api, core, pki, "alice.ret", "bob.ret")
    now = dt.datetime.now(dt.UTC)
    policy = RetentionPolicy()
    assert policy.unclaimed_days == 30
    # Users see what was held since they joined: here, for a month and more.
    await core.pool.execute("UPDATE device_users SET joined_at = now() - interval '60 days'")
    await _hold(core, device_id, (now - 31 * DAY, 70.0), seq=1, received=now - 31 * DAY)
    await _hold(core, device_id, (now - 29 * DAY, 70.5), seq=2, received=now - 29 * DAY)
    job = Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                      core.audit, policy)
    removed = await job.enforce_retention(now)
    assert removed["unclaimed"] == 1
    [kept] = await _unclaimed(api, device_id, alice)
    assert kept["values"]["body_weight"]["value"] == 70.5
    assert dt.datetime.fromisoformat(kept["expires_at"]) == dt.datetime.fromisoformat(
        kept["held_at"]) + 30 * DAY
    run = await core.pool.fetchrow("SELECT cutoff, removed FROM retention_runs"
                                   " WHERE kind = 'unclaimed'")
    assert (run["cutoff"], run["removed"]) == (now - 30 * DAY, 1)


async def test_erasing_a_member_ends_their_membership(api: TestClient[Any, Any], core: Core,
                                                     pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.stays", "bob.erased")
    now = dt.datetime.now(dt.UTC)
    await _hold(core, device_id, (now - dt.timedelta(minutes=1), 80.0))
    [held] = await _unclaimed(api, device_id, bob)
    await api.post(f"/v1/me/devices/{device_id}/unclaimed/{held['id']}/dismiss",
                   headers=alice.auth())
    resp = await api.request("DELETE", "/v1/me", headers=bob.auth(),
                             json={"password": PASSWORD, "totp": code(bob.secret, 1)})
    assert resp.status == 200, await resp.text()
    assert await core.registry.users([device_id]) == {device_id: [uuid.UUID(alice.id)]}
    # Bob was the only one who had not dismissed it: it goes with him.
    assert await core.pool.fetchval("SELECT count(*) FROM unclaimed_readings") == 0
    assert (await core.registry.get(device_id)).state == "paired"


async def test_erasing_the_owner_unpairs_the_scale_for_everyone_and_its_held_data(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.gone", "bob.left")
    now = dt.datetime.now(dt.UTC)
    await _hold(core, device_id, (now - dt.timedelta(minutes=1), 80.0))
    assert await core.pool.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1",
                                    device_owner(device_id)) == 1
    resp = await api.request("DELETE", "/v1/me", headers=alice.auth(),
                             json={"password": PASSWORD, "totp": code(alice.secret, 1)})
    assert resp.status == 200, await resp.text()
    assert (await core.registry.get(device_id)).state == "revoked"
    for table, column in (("device_users", "device_id"), ("unclaimed_readings", "device_id"),
                          ("device_invitations", "device_id"), ("data_keys", "owner")):
        value = device_owner(device_id) if column == "owner" else device_id
        assert await core.pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = $1", value) == 0, table  # noqa: S608
    resp = await api.get("/v1/me/devices", headers=bob.auth())
    assert (await resp.json())["devices"] == []
    resp = await api.get(f"/v1/me/devices/{device_id}/unclaimed", headers=bob.auth())
    assert resp.status == 404


async def test_unpairing_a_shared_scale_erases_its_held_weighings(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    device_id, alice, [bob] = await _household(api, core, pki, "alice.unpair", "bob.unpair")
    now = dt.datetime.now(dt.UTC)
    await _hold(core, device_id, (now - dt.timedelta(minutes=1), 80.0))
    # A backup taken before: the held row and the device's wrapped key.
    dump = await core.pool.fetchrow("SELECT * FROM unclaimed_readings")
    key_row = await core.pool.fetchrow("SELECT * FROM data_keys WHERE owner = $1",
                                       device_owner(device_id))
    resp = await api.delete(f"/v1/me/devices/{device_id}", headers=alice.auth())
    assert resp.status == 204
    assert await core.pool.fetchval("SELECT count(*) FROM unclaimed_readings") == 0
    assert await core.registry.users([device_id]) == {}
    # Restoring the wrapped key from that backup does not help: its secret half is gone.
    await core.pool.execute("INSERT INTO data_keys (owner, version, kek_id, wrapped)"
                            " VALUES ($1, $2, $3, $4)", key_row["owner"], key_row["version"],
                            key_row["kek_id"], key_row["wrapped"])
    async with core.pool.acquire() as conn:
        with pytest.raises(KeyUnavailable):
            await open_held(conn, core.keyring, dump)
    resp = await api.get("/v1/me/devices", headers=bob.auth())
    assert (await resp.json())["devices"] == []
