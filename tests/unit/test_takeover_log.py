"""Reading takeovers out of Mosquitto's connection log."""

import asyncio
import dataclasses
import datetime as dt

from devices.broker_config import BrokerFiles, ServicesListener, mosquitto_conf
from devices.takeover import (
    TakeoverDetector,
    TakeoverStats,
    TakeoverWatcher,
    is_takeover,
    log_time,
    refusal_kind,
    render,
)

T = "2026-12-02T18:09:04+0000"
AT = dt.datetime(2026, 12, 2, 18, 9, 4, tzinfo=dt.UTC)


def _connected(client_id: str, user: str | None, peer: str = "127.0.0.1:47631") -> str:
    tail = f", u'{user}'" if user is not None else ""
    return f"{T}: New client connected from {peer} as {client_id} (p5, c1, k60{tail})."


def test_a_device_under_another_devices_live_client_id_is_a_takeover():
    detector = TakeoverDetector()
    assert detector.feed(f"{T}: New connection from 127.0.0.1:49779 on port 8883.") is None
    assert detector.feed(
        f"{T}: Client watch-aaaaaaaaaaaa already connected, closing old connection.") is None
    event = detector.feed(_connected("watch-aaaaaaaaaaaa", "watch-bbbbbbbbbbbb"))
    assert event is not None
    assert (event.at, event.client_id, event.identity, event.live_session_closed) == (
        AT, "watch-aaaaaaaaaaaa", "watch-bbbbbbbbbbbb", True)


def test_an_offline_victim_is_still_recorded_without_a_closed_session():
    event = TakeoverDetector().feed(_connected("scale-aaaaaaaaaaaa", "watch-bbbbbbbbbbbb"))
    assert event is not None and not event.live_session_closed


def test_own_client_id_bridge_and_revoker_ids_are_not_takeovers():
    detector = TakeoverDetector()
    assert detector.feed(_connected("watch-aaaaaaaaaaaa", "watch-aaaaaaaaaaaa")) is None
    assert detector.feed(_connected("svc-bridge-host1", "svc-bridge")) is None
    assert detector.feed(_connected("svc-revoker-0a1b2c3d", "svc-revoker")) is None
    # The revoker ends sessions through the broker's plugin, never under a device's id.
    assert is_takeover("watch-aaaaaaaaaaaa", "svc-revoker")
    assert is_takeover("watch-aaaaaaaaaaaa", "svc-bridge")
    assert is_takeover("anything-else", "watch-bbbbbbbbbbbb")  # a device keeps its own id


def test_a_client_id_crafted_to_look_like_the_suffix_names_the_real_identity():
    crafted = "watch-aaaaaaaaaaaa (p5, c1, k60, u'watch-aaaaaaaaaaaa')."
    event = TakeoverDetector().feed(_connected(crafted, "watch-bbbbbbbbbbbb"))
    assert event is not None and event.identity == "watch-bbbbbbbbbbbb"
    assert event.client_id == crafted


def test_log_times_with_offset_without_and_in_unix_seconds():
    assert log_time(T) == AT
    assert log_time("2026-12-02T18:09:04") == AT
    assert log_time(str(int(AT.timestamp()))) == AT
    assert log_time("yesterday") is None


def test_metrics_render_the_counter():
    text = render(TakeoverStats(takeovers=3, lines=10, following=True))
    assert "# TYPE healthiot_broker_client_id_takeovers_total counter" in text
    assert "healthiot_broker_client_id_takeovers_total 3\n" in text
    assert "healthiot_broker_log_following 1\n" in text


class _Store:
    """Records in a list, one per connection as the table's unique key does."""

    def __init__(self):
        self.events = []

    async def record(self, event):
        key = (event.at, event.peer, event.client_id)
        if key in {(e.at, e.peer, e.client_id) for e in self.events}:
            return False
        self.events.append(event)
        return True


async def test_the_watcher_follows_appends_half_lines_and_a_rotated_log(tmp_path):
    log_file = tmp_path / "mosquitto.log"
    log_file.write_text(_connected("watch-aaaaaaaaaaaa", "watch-bbbbbbbbbbbb") + "\n")
    store = _Store()
    watcher = TakeoverWatcher(log_file, store, poll_interval_s=0.01)  # type: ignore[arg-type]
    caught_up = asyncio.Event()
    task = asyncio.create_task(watcher.run(caught_up))
    try:
        await asyncio.wait_for(caught_up.wait(), 5)
        assert [e.identity for e in store.events] == ["watch-bbbbbbbbbbbb"]
        line = _connected("watch-aaaaaaaaaaaa", "watch-cccccccccccc", "127.0.0.1:2")
        # A line written in two steps is read once, whole (a local file: blocking is fine).
        with open(log_file, "a") as f:  # noqa: ASYNC230
            f.write(line[:30])
            f.flush()
            await asyncio.sleep(0.05)
            f.write(line[30:] + "\n")
        await _until(lambda: len(store.events) == 2)
        rotated = tmp_path / "new.log"  # rotation: a new file, the same line read again
        rotated.write_text(line + "\n" + _connected("watch-aaaaaaaaaaaa", "watch-dddddddddddd",
                                                    "127.0.0.1:3") + "\n")
        rotated.replace(log_file)
        await _until(lambda: len(store.events) == 3)
        assert [e.identity for e in store.events][1:] == ["watch-cccccccccccc",
                                                          "watch-dddddddddddd"]
        assert watcher.stats.takeovers == 3 and watcher.stats.following
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def test_a_device_has_one_client_id_its_own():
    assert not is_takeover("watch-aaaaaaaaaaaa", "watch-aaaaaaaaaaaa")
    assert is_takeover("watch-aaaaaaaaaaaa.renew", "watch-aaaaaaaaaaaa")  # no second one
    assert is_takeover("watch-aaaaaaaaaaaax", "watch-aaaaaaaaaaaa")


def test_the_plugins_refusals_are_counted_by_kind_and_nothing_else_is():
    assert refusal_kind(f"{T}: healthiot: refused subscribe by watch-aaaaaaaaaaaa") == \
        "subscribe"
    assert refusal_kind(f"{T}: healthiot: refused publish by watch-aaaaaaaaaaaa") == "publish"
    assert refusal_kind(f"{T}: healthiot: refused subscribe by watch-a (p5)") is None
    assert refusal_kind(_connected("watch-aaaaaaaaaaaa", "watch-aaaaaaaaaaaa")) is None
    stats = TakeoverStats()
    stats.refusals["subscribe"] += 3
    text = render(stats)
    assert 'healthiot_broker_refusals_total{kind="subscribe"} 3\n' in text
    assert 'healthiot_broker_refusals_total{kind="publish"} 0\n' in text


def test_the_broker_logs_connections_with_an_offset_and_to_a_file_when_asked(tmp_path):
    files = BrokerFiles(tmp_path / "c.pem", tmp_path / "b.pem", tmp_path / "b.key",
                        tmp_path / "healthiot_acl.so", tmp_path / "data")
    services = ServicesListener("127.0.0.1", 8884)
    conf = mosquitto_conf(files, bind="127.0.0.1", port=8883, services=services).splitlines()
    assert {"connection_messages true", "log_type notice",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S%z"} <= set(conf)
    assert not [line for line in conf if line.startswith("log_dest file")]
    logged = dataclasses.replace(files, log=tmp_path / "broker.log")
    assert f"log_dest file {tmp_path / 'broker.log'}" in mosquitto_conf(
        logged, bind="127.0.0.1", port=8883, services=services).splitlines()
