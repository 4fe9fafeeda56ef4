"""The medical-record feed against the record simulator (tests/record_sim), over real
HTTPS: the patient links their record (OAuth code + PKCE), enables the feed, and readings
arrive as the ANS "Mesures de santé" guide wants them; each of the record's refusals ends
in a state the patient can read, and nothing is lost or sent twice."""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import ssl
import uuid
import zoneinfo
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.bundle import Bundle

from api.app import create_app
from api.limits import Limits
from api.record_auth import RecordAccount, RecordAuthConfig
from api.record_feed import FeedConfig, FeedSender
from api.record_models import DeviceModel, ModelCatalogue
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from healthiot.services import Core
from storage.record_feed import RecordFeed
from storage.record_links import RecordLinks
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.conftest import new_patient
from tests.integration.test_patient_api import PASSWORD, code, register
from tests.record_sim import profiles
from tests.record_sim.server import Person, RecordSimulator, serve
from vitals import fhir

OID = "1.2.250.1.999.1"
REDIRECT = "https://healthiot.test/v1/record-link/callback"
ALICE = Person("1.2.250.1.213.1.4.10", "IDPE0000000001")
BOB = Person("1.2.250.1.213.1.4.10", "IDPE0000000002")
MODELS = ModelCatalogue({
    "watch": DeviceModel("Example Wearables", "EW-1", "528457", {"steps": 0}),
    "scale": DeviceModel("Example Medical", "ES-2", "528399", {"body_weight": 1}),
    "bp_cuff": DeviceModel("Example Medical", "EB-3", "528391", {"blood_pressure": 0}),
    "glucometer": DeviceModel("Example Medical", "EG-4", "528401", {"blood_glucose": 0}),
})
DEVICES = {"watch": ("watch-0a0001", "00-1B-C5-FF-FE-00-00-01"),
           "scale": ("scale-0a0002", "00-1B-C5-FF-FE-00-00-02"),
           "bp_cuff": ("bpcuff-0a0003", "00-1B-C5-FF-FE-00-00-03"),
           "glucometer": ("glucometer-0a0004", "00-1B-C5-FF-FE-00-00-04")}
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


@dataclass
class Env:
    core: Core
    sim: RecordSimulator
    session: aiohttp.ClientSession
    account: RecordAccount
    feed: RecordFeed
    sender: FeedSender
    patient: uuid.UUID

    async def link(self, person: Person, patient: uuid.UUID | None = None) -> None:
        """The patient's browser: to the record's sign-in, back with a code."""
        self.sim.user = person
        url = await self.account.begin(patient or self.patient)
        state, got = await follow(self.session, url)
        assert got is not None
        await self.account.complete(state, got)

    async def drain(self) -> dict[str, int]:
        """Post until nothing is due (retries due at once: zero backoff)."""
        total = {"sent": 0, "refused": 0, "retry": 0, "waiting": 0}
        for _ in range(10):
            counts = await self.sender.send_due()
            total = {k: total[k] + counts[k] for k in total}
            if not any(counts.values()):
                break
        return total


async def follow(session: aiohttp.ClientSession, url: str) -> tuple[str, str | None]:
    """(state, code) of the record's redirect to our callback."""
    async with session.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT)
    query = parse_qs(urlsplit(location).query)
    return query["state"][0], query.get("code", [None])[0]


@pytest.fixture
async def record(tmp_path) -> AsyncIterator[tuple[RecordSimulator, aiohttp.ClientSession]]:  # type: ignore[no-untyped-def]
    sim = RecordSimulator("healthiot-test", secrets.token_urlsafe(24), REDIRECT, OID)
    async with serve(sim, tmp_path) as ca_file:
        tls = ssl.create_default_context(cafile=str(ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
            yield sim, session


def _account(core: Core, sim: RecordSimulator, session: aiohttp.ClientSession
             ) -> RecordAccount:
    return RecordAccount(RecordAuthConfig(sim.base_url, sim.client_id, sim.client_secret,
                                          REDIRECT), RecordLinks(core.pool, core.keyring),
                         session)


async def _devices(core: Core, patient: uuid.UUID, account: RecordAccount) -> None:
    for model, (device_id, eui) in DEVICES.items():
        await core.pool.execute(
            "INSERT INTO devices (id, model, serial, patient_id, state)"
            " VALUES ($1, $2, $3, $4, 'paired')", device_id, model, f"SN-{device_id}", patient)
        await account.links.set_system_id(device_id, eui)


@pytest.fixture
async def env(core, record) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    sim, session = record
    patient, _, _ = await new_patient(core, "feed")
    account = _account(core, sim, session)
    await _devices(core, patient, account)
    feed = RecordFeed(core.pool, core.keyring)
    sender = FeedSender(feed, core.store, core.audit, session,
                        FeedConfig(url=f"{sim.base_url}/fhir", sender_oid=OID,
                                   base_backoff_s=0.0, relink_wait_s=0.0),
                        account, MODELS)
    yield Env(core, sim, session, account, feed, sender, patient)


async def _ingest(core: Core, patient: uuid.UUID, device: str, seq: int,
                  series: dict[str, tuple[list[int], list[float]]]) -> None:
    now = dt.datetime.now(dt.UTC)
    await core.store.ingest([MessageIn(DEVICES[device][0], seq, now, [
        SegmentIn(patient, metric, Samples(np.asarray(t, np.int64), np.asarray(v, float),
                                           np.zeros(len(t), np.uint8)))
        for metric, (t, v) in series.items()], 0)])


async def _a_few_readings(env: Env) -> None:
    """Three weighings and a blood pressure, in the last three days."""
    t0 = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 3 * 86_400_000
    days = [t0 + i * 86_400_000 for i in range(3)]
    await _ingest(env.core, env.patient, "scale", 1, {"body_weight": (days, [80.1, 80.4,
                                                                              79.9])})
    await _ingest(env.core, env.patient, "bp_cuff", 1, {"systolic_bp": (days[:1], [128.0]),
                                                        "diastolic_bp": (days[:1], [82.0])})


def _week(start: dt.datetime) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """A week of a watch (steps every 15 minutes), a scale (each morning), a cuff (morning
    and evening, converted values with false precision) and a glucometer (three a day)."""
    ms = int(start.timestamp() * 1000)
    day, quarter = 86_400_000, 900_000
    # Each Paris day's own quarters (92 or 100 on a day the clocks change): a week of 168
    # hours would spill into an eighth day across the spring change.
    midnights = [int((start + dt.timedelta(days=d)).timestamp() * 1000) for d in range(8)]
    steps_t = [t for a, b in itertools.pairwise(midnights) for t in range(a, b, quarter)]
    rng = np.random.default_rng(20)
    return {
        "watch": {"steps": (steps_t, rng.integers(0, 400, len(steps_t)).astype(float)
                            .tolist())},
        "scale": {"body_weight": ([ms + d * day + 7 * 3_600_000 for d in range(7)],
                                  [80.0 + 0.123456 * d for d in range(7)])},
        "bp_cuff": {"systolic_bp": ([ms + d * day + h * 3_600_000 for d in range(7)
                                     for h in (8, 20)], [123.010116] * 14),
                    "diastolic_bp": ([ms + d * day + h * 3_600_000 for d in range(7)
                                      for h in (8, 20)], [81.40845] * 14)},
        "glucometer": {"blood_glucose": ([ms + d * day + h * 3_600_000 for d in range(7)
                                          for h in (7, 12, 19)], [104.03] * 21)},
    }


async def test_a_linked_patient_gets_a_week_of_readings_with_no_refusal(env: Env) -> None:
    """Done when: a week of watch, scale, BP and glucometer readings arrives with 0
    refusals; every resource passes the IG checker and round-trips through
    fhir.resources; nothing is sent twice."""
    today = dt.datetime.now(PARIS).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=8)
    for seq, (device, series) in enumerate(_week(start).items(), 1):
        await _ingest(env.core, env.patient, device, seq, series)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    queued = await env.sender.collect()
    assert queued == 7 + 7 + 14 + 21  # steps by day, weighings, BP panels, glucose
    assert await env.drain() == {"sent": queued, "refused": 0, "retry": 0, "waiting": 0}
    assert dict(env.sim.answers) == {200: queued}
    assert sorted(set(env.sim.received.values())) == [1]  # each reading once
    for bundle in env.sim.accepted:
        assert profiles.check_bundle(bundle, OID) == []
        assert Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)
        assert str(env.patient) not in str(bundle)  # no internal id leaves
    obs = env.sim.observations()
    by_code = {o["code"]["coding"][0]["code"] for o in obs}
    assert by_code == {"41950-7", "29463-7", "85354-9", "2345-7"}
    bp = next(o for o in obs if o["code"]["coding"][0]["code"] == "85354-9")
    assert [c["valueQuantity"]["value"] for c in bp["component"]] == [123, 81]
    weights = sorted(o["valueQuantity"]["value"] for o in obs
                     if o["code"]["coding"][0]["code"] == "29463-7")
    assert weights == [80.0, 80.1, 80.2, 80.4, 80.5, 80.6, 80.7]
    assert {o["subject"]["identifier"]["value"] for o in obs} == {ALICE.idpe}
    # Collecting again queues nothing; nothing is due; nothing is posted again.
    assert await env.sender.collect() == 0
    assert await env.drain() == {"sent": 0, "refused": 0, "retry": 0, "waiting": 0}
    status = await env.feed.status(env.patient)
    assert (status.link, status.pending, status.sent, status.refused) == ("linked", 0,
                                                                          queued, 0)


async def test_posts_carry_the_patients_token_and_a_token_near_expiry_is_refreshed_first(
        env: Env) -> None:
    """Seen: no access token, no setting for one. Now each post carries the patient's
    bearer token, refreshed before it expires."""
    env.sim.access_ttl_s = 60.0  # shorter than the refresh margin: refreshed before use
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()
    assert (await env.drain())["sent"] == 4
    assert env.sim.refreshes >= 1
    assert env.sim.answers[401] == 0


async def test_a_401_refreshes_the_token_once_and_sends(env: Env) -> None:
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()
    env.sim.access.clear()  # the record no longer takes our access token; refresh still ok
    assert (await env.drain())["sent"] == 4
    assert env.sim.refreshes == 1 and env.sim.answers[401] == 1


async def test_a_lost_authorisation_asks_to_link_again_and_loses_nothing(env: Env) -> None:
    """Seen: a 401 made the feed retry forever while the patient saw 'pending'. Now a 401
    with a refresh the record refuses asks the patient to link again; the readings wait
    and go out once, after the new link."""
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()
    env.sim.forget_tokens()
    assert await env.sender.send_due() == {"sent": 0, "refused": 0, "retry": 0, "waiting": 4}
    status = await env.feed.status(env.patient)
    assert (status.link, status.pending) == ("relink", 4)
    readings = await env.feed.readings(env.patient)
    assert {r["reason"] for r in readings} == {
        "waiting: link your medical record again so the feed can resume"}
    posts = sum(env.sim.answers.values())
    assert await env.sender.send_due() == {"sent": 0, "refused": 0, "retry": 0, "waiting": 4}
    assert sum(env.sim.answers.values()) == posts  # no post without a usable link
    await env.link(ALICE)
    await env.feed.wake(env.patient)
    assert (await env.drain())["sent"] == 4
    assert sorted(env.sim.received.values()) == [1, 1, 1, 1]


async def test_a_reading_for_another_person_is_refused_and_shown(env: Env) -> None:
    """403 'idPe requested do not match authorized idPe': cannot heal, not retried."""
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()  # bundles name Alice
    await env.link(BOB)  # the patient linked another record account meanwhile
    assert (await env.drain()) == {"sent": 0, "refused": 4, "retry": 0, "waiting": 0}
    status = await env.feed.status(env.patient)
    assert status.last_refusal == ("the medical record refused: the reading names another "
                                   "person than the linked record: idPe requested do not "
                                   "match authorized idPe.")
    assert env.sim.answers == {403: 4} and not env.sim.received


async def test_consent_refused_by_the_record_is_readable_by_the_patient(env: Env) -> None:
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    env.sim.consent[ALICE.idpe] = False
    await env.sender.collect()
    assert (await env.drain())["refused"] == 4
    status = await env.feed.status(env.patient)
    assert (status.refused, status.pending) == (4, 0)
    assert status.last_refusal == ("the medical record refused: consent not given: "
                                   "Consent not given, access refused.")
    audit = await env.core.audit.for_patient(env.patient)
    assert [(r["action"], r["outcome"]) for r in audit].count(("feed", "refused")) == 4
    assert env.sim.answers == {403: 4}  # refused once each, never retried


async def _enqueue_tampered(env: Env, change: Any) -> None:
    """A reading whose Bundle ``change`` broke, queued as the feed would queue it."""
    t = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 3_600_000
    await _ingest(env.core, env.patient, "scale", 1, {"body_weight": ([t], [72.5])})
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    from api.record_feed import bundles_for

    [(ident, metric, bundle)] = bundles_for(
        env.patient, fhir.person_subject(ALICE.oid, ALICE.idpe), OID,
        {DEVICES["scale"][0]: {"body_weight": Samples(np.array([t], np.int64),
                                                      np.array([72.5]),
                                                      np.zeros(1, np.uint8))}},
        await env.feed.devices([DEVICES["scale"][0]]), MODELS,
        {DEVICES["scale"][0]: DEVICES["scale"][1]})
    change(bundle["entry"][1]["resource"])
    assert await env.feed.enqueue(env.patient, [(ident, metric, bundle)]) == 1


async def test_a_device_not_linked_is_refused_with_the_records_reason(env: Env) -> None:
    def unlink(obs: dict[str, Any]) -> None:
        obs["device"] = {"reference": "urn:uuid:" + str(uuid.uuid4())}

    await _enqueue_tampered(env, unlink)
    assert (await env.drain())["refused"] == 1
    [reading] = await env.feed.readings(env.patient)
    assert reading["state"] == "refused"
    assert reading["reason"] == ("the medical record refused the reading as invalid: "
                                 "Observation and device not linked by id "
                                 "(Observation.device.reference <-> Device.id)")
    assert env.sim.answers == {422: 1}


async def test_a_profile_error_is_refused_with_the_records_reason(env: Env) -> None:
    def sampled(obs: dict[str, Any]) -> None:
        quantity = obs.pop("valueQuantity")
        obs["valueSampledData"] = {"origin": {**quantity, "value": 0}, "period": 1000,
                                   "dimensions": 1, "data": "72.5"}

    await _enqueue_tampered(env, sampled)
    assert (await env.drain())["refused"] == 1
    status = await env.feed.status(env.patient)
    assert status.last_refusal is not None
    assert "valueSampledData is not allowed" in status.last_refusal
    assert sum(env.sim.answers.values()) == 1  # not retried


async def test_429_and_5xx_are_retried_and_nothing_is_lost_or_sent_twice(env: Env) -> None:
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()
    env.sim.forced.extend([(429, None, {"Retry-After": "0"}), (503, None, {}),
                           (500, None, {})])
    assert await env.sender.send_due() == {"sent": 1, "refused": 0, "retry": 3, "waiting": 0}
    assert (await env.feed.status(env.patient)).pending == 3
    assert (await env.drain())["sent"] == 3
    assert sorted(env.sim.received.values()) == [1, 1, 1, 1]
    assert (env.sim.answers[429], env.sim.answers[503], env.sim.answers[500]) == (1, 1, 1)


async def test_a_post_repeated_after_a_crash_creates_nothing_twice(env: Env) -> None:
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()
    await env.drain()
    # A sender that died after posting but before recording it: the entry is due again.
    await env.core.pool.execute("UPDATE record_feed_outbox SET state = 'pending',"
                                " next_attempt_at = now() WHERE patient_id = $1", env.patient)
    assert (await env.sender.send_due())["sent"] == 4
    assert sorted(env.sim.received.values()) == [2, 2, 2, 2]
    assert sum(1 for kind in env.sim.created.values() if kind == "Observation") == 4


async def test_the_record_unreachable_is_retried_later(core, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = RecordSimulator("healthiot-test", "s", REDIRECT, OID)
    async with serve(sim, tmp_path) as ca_file:
        tls = ssl.create_default_context(cafile=str(ca_file))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls))
        patient, _, _ = await new_patient(core, "offline")
        account = _account(core, sim, session)
        await _devices(core, patient, account)
        feed = RecordFeed(core.pool, core.keyring)
        sender = FeedSender(feed, core.store, core.audit, session,
                            FeedConfig(url=f"{sim.base_url}/fhir", sender_oid=OID),
                            account, MODELS)
        env = Env(core, sim, session, account, feed, sender, patient)
        await _a_few_readings(env)
        await env.link(ALICE)
        await feed.set_consent(patient, True)
        await sender.collect()
    try:  # the record is gone: connection refused
        assert (await sender.send_due())["retry"] == 4
        assert (await feed.status(patient)).pending == 4
        rows = await core.pool.fetch("SELECT attempts, last_error FROM record_feed_outbox")
        assert all(r["attempts"] == 1 and "unreachable" in r["last_error"] for r in rows)
    finally:
        await session.close()


async def test_nothing_secret_is_stored_in_clear(env: Env) -> None:
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    await env.sender.collect()
    link = await env.account.links.get(env.patient)
    assert link is not None
    secrets_ = [link.tokens.access_token.encode(), str(link.tokens.refresh_token).encode(),
                ALICE.idpe.encode()]
    rows = await env.core.pool.fetch("SELECT tokens_sealed AS b FROM record_links UNION ALL"
                                     " SELECT sealed FROM record_feed_outbox")
    assert rows and all(s not in r["b"] for r in rows for s in [*secrets_, b"80.1"])


async def test_a_stale_or_replayed_sign_in_does_not_link(env: Env) -> None:
    env.sim.user = ALICE
    url = await env.account.begin(env.patient)
    state, got = await follow(env.session, url)
    assert got is not None
    await env.account.complete(state, got)
    from api.record_auth import LinkRefused

    with pytest.raises(LinkRefused):  # the same redirect again
        await env.account.complete(state, got)
    with pytest.raises(LinkRefused):
        await env.account.complete("made-up", got)


@pytest.fixture
async def app_env(env: Env) -> AsyncIterator[tuple[TestClient[Any, Any], Env]]:
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    core = env.core
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens, record=env.account,
                             limits=Limits(requests_per_second=1000, request_burst=1000)))
    async with TestClient(TestServer(app)) as client:
        yield client, env


async def _move_devices(env: Env, patient: uuid.UUID) -> None:
    """The fixture's devices now belong to ``patient`` (an account made over HTTP)."""
    await env.core.pool.execute("DELETE FROM device_users")
    await env.core.pool.execute("UPDATE devices SET patient_id = $1", patient)
    env.patient = patient


async def _link_over_http(client: TestClient[Any, Any], env: Env,
                          auth: dict[str, str]) -> None:
    resp = await client.post("/v1/me/record-link", headers=auth)
    assert resp.status == 200, await resp.text()
    env.sim.user = ALICE
    state, got = await follow(env.session, (await resp.json())["authorization_url"])
    resp = await client.get("/v1/record-link/callback", params={"state": state, "code": got})
    assert resp.status == 200, await resp.text()


async def test_the_patient_links_enables_and_reads_the_feed_over_http(app_env) -> None:  # type: ignore[no-untyped-def]
    client, env = app_env
    account = await register(client, "rita.record")
    patient = uuid.UUID(account.id)
    auth = account.auth()
    resp = await client.put("/v1/me/record-feed", headers=auth, json={"enabled": True})
    assert resp.status == 409  # no link yet: the record would not know who this is
    resp = await client.put("/v1/me/record-feed", headers=auth,
                            json={"enabled": True, "ins": "185077512345699"})
    assert resp.status == 422  # the INS is no longer asked for
    await _link_over_http(client, env, auth)
    resp = await client.put("/v1/me/record-feed", headers=auth, json={"enabled": True})
    assert resp.status == 200
    assert await resp.json() == {"enabled": True, "link": "linked", "pending": 0, "sent": 0,
                                 "refused": 0, "last_refusal": None}
    await _move_devices(env, patient)
    await _a_few_readings(env)
    env.sim.consent[ALICE.idpe] = True
    await env.sender.collect()
    env.sim.forced.append((503, None, {}))
    await env.sender.send_due()
    readings = (await (await client.get("/v1/me/record-feed/readings", headers=auth)).json())
    states = sorted(r["state"] for r in readings["readings"])
    assert states == ["pending", "sent", "sent", "sent"]
    pending = next(r for r in readings["readings"] if r["state"] == "pending")
    assert pending["reason"] == "the medical record answered 503"
    log = await (await client.get("/v1/me/access-log", headers=auth)).json()
    assert [e["outcome"] for e in log["entries"] if e["action"] == "feed"] == ["ok"] * 3


async def test_unlinking_revokes_the_tokens_and_stops_the_feed(app_env) -> None:  # type: ignore[no-untyped-def]
    """Done when: unlinking revokes the tokens and stops the feed."""
    client, env = app_env
    account = await register(client, "ulla.unlink")
    patient = uuid.UUID(account.id)
    auth = account.auth()
    await _link_over_http(client, env, auth)
    assert (await client.put("/v1/me/record-feed", headers=auth,
                             json={"enabled": True})).status == 200
    await _move_devices(env, patient)
    await _a_few_readings(env)
    await env.sender.collect()
    link = await env.account.links.get(patient)
    assert link is not None
    resp = await client.delete("/v1/me/record-link", headers=auth)
    assert resp.status == 204
    assert {link.tokens.access_token, link.tokens.refresh_token} <= set(env.sim.revoked)
    status = (await (await client.get("/v1/me/record-feed", headers=auth)).json())
    assert (status["enabled"], status["link"]) == (False, "none")
    assert (await env.drain())["refused"] == 4  # queued readings are not sent
    assert sum(env.sim.answers.values()) == 0
    assert await env.sender.collect() == 0


async def test_turning_the_feed_off_revokes_the_tokens(app_env) -> None:  # type: ignore[no-untyped-def]
    client, env = app_env
    account = await register(client, "otto.off")
    auth = account.auth()
    await _link_over_http(client, env, auth)
    link = await env.account.links.get(uuid.UUID(account.id))
    assert link is not None
    resp = await client.put("/v1/me/record-feed", headers=auth, json={"enabled": False})
    assert (await resp.json())["link"] == "none"
    assert link.tokens.refresh_token in env.sim.revoked


async def test_erasure_revokes_the_tokens_and_stops_the_feed(app_env) -> None:  # type: ignore[no-untyped-def]
    """Done when: erasure revokes the tokens and stops the feed."""
    client, env = app_env
    account = await register(client, "erin.erase")
    patient = uuid.UUID(account.id)
    auth = account.auth()
    await _link_over_http(client, env, auth)
    assert (await client.put("/v1/me/record-feed", headers=auth,
                             json={"enabled": True})).status == 200
    link = await env.account.links.get(patient)
    assert link is not None
    resp = await client.delete("/v1/me", headers=auth,
                               json={"password": PASSWORD, "totp": code(account.secret, 1)})
    assert resp.status == 200, await resp.text()
    assert {link.tokens.access_token, link.tokens.refresh_token} <= set(env.sim.revoked)
    left = await env.core.pool.fetchval(
        "SELECT (SELECT count(*) FROM record_links) + (SELECT count(*) FROM"
        " record_feed_consents WHERE patient_id = $1)", patient)
    assert left == 0
    assert patient not in await env.feed.consenting()


async def test_a_device_without_a_system_id_waits_and_an_id_must_be_an_eui64(env: Env
                                                                             ) -> None:
    """The PHD system id is recorded, never made up: until it is, the device's readings
    are not queued (the record would refuse them); an id that is not an EUI-64, or of an
    unregistered device, is refused by the database."""
    import asyncpg

    await env.core.pool.execute("DELETE FROM record_device_system_ids WHERE device_id = $1",
                                DEVICES["scale"][0])
    await _a_few_readings(env)
    await env.link(ALICE)
    await env.feed.set_consent(env.patient, True)
    assert await env.sender.collect() == 1  # the cuff's reading; the scale's wait
    await env.account.links.set_system_id(DEVICES["scale"][0], "00-1b-c5-ff-fe-00-00-02")
    assert await env.sender.collect() == 3
    with pytest.raises(asyncpg.CheckViolationError):
        await env.account.links.set_system_id(DEVICES["scale"][0], "SN-0042")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await env.account.links.set_system_id("nobody-000000", "00-1B-C5-FF-FE-00-00-09")
