"""Refusal notices: a device learns on its inbox what the bridge refused, and why.

The bridge hands ``Notifier.refused`` the refusals of a batch once the batch has committed
(so a notice never announces a refusal that was rolled back), and calls ``send`` after it
has acked the batch, so notices never delay an ack. A notice is asyncapi.yaml's
``refusalNotice``: ``{"refused": "message"|"samples", "reason": code, "seq": n, "epoch": n,
"samples": {reason: count}, "suppressed": n}``.

A broken device can send thousands of bad messages a second; each device has a token
bucket (a burst, then a steady trickle) and what it refuses is only counted, the count
travelling in the next notice sent (``suppressed``). Pending notices are bounded too, and a
notice that cannot be published is dropped, never retried: it is information, not data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import Client, MqttError
from devices.broker_config import inbox_topic

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused message (``samples`` None) or the refused samples of a stored one."""

    device_id: str
    reason: str
    seq: int | None = None  # None: the message had no usable number
    epoch: int | None = None
    samples: Mapping[str, int] | None = None  # refused samples by reason


@dataclass(frozen=True)
class NoticeConfig:
    burst: float = 10.0  # a firmware team sees its first ten mistakes at once
    per_s: float = 1 / 6  # then one every 6 s: at most 600 an hour per device
    max_devices: int = 10_000  # buckets kept; the least recently used are forgotten
    max_pending: int = 1_000  # notices waiting for ``send``; more are dropped and counted
    publish_timeout_s: float = 5.0


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


def notice_payload(refusal: Refusal, suppressed: int = 0) -> bytes:
    """The inbox payload of ``refusal``."""
    body: dict[str, object] = {"refused": "samples" if refusal.samples else "message",
                               "reason": refusal.reason}
    if refusal.seq is not None:
        body["seq"] = refusal.seq
    if refusal.epoch is not None:
        body["epoch"] = refusal.epoch
    if refusal.samples:
        body["samples"] = dict(sorted(refusal.samples.items()))
    if suppressed:
        body["suppressed"] = suppressed
    return json.dumps(body, separators=(",", ":")).encode()


class Notifier:
    """Rate-limits refusal notices per device and publishes them on the devices' inboxes.

    ``stats`` counts notices ``sent``, ``suppressed`` (rate limit or full queue) and
    ``failed`` (the broker refused or did not answer)."""

    def __init__(self, config: NoticeConfig = NoticeConfig(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._pending: list[tuple[str, bytes]] = []
        self.stats: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def refused(self, refusals: Iterable[Refusal]) -> None:
        """Queue a notice for each refusal its device's bucket allows; count the others."""
        now = self._clock()
        config = self.config
        for refusal in refusals:
            bucket = self._buckets.get(refusal.device_id)
            if bucket is None:
                bucket = self._buckets[refusal.device_id] = _Bucket(config.burst, now)
                if len(self._buckets) > config.max_devices:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(refusal.device_id)
                bucket.tokens = min(config.burst, bucket.tokens + (now - bucket.at) * config.per_s)
                bucket.at = now
            if bucket.tokens < 1 or len(self._pending) >= config.max_pending:
                bucket.suppressed += 1
                self.stats["suppressed"] += 1
                continue
            bucket.tokens -= 1
            self._pending.append((refusal.device_id, notice_payload(refusal, bucket.suppressed)))
            bucket.suppressed = 0

    async def send(self, client: Client) -> int:
        """Publish the pending notices (QoS 1, concurrently); returns how many the broker
        accepted. Never raises for the broker: a notice that fails is dropped and counted."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE
        # No Message Expiry Interval: with one, a later test's telemetry to a fresh shared
        # subscriber was sometimes never delivered (1 run in 3, cause not found).

        async def one(device_id: str, payload: bytes) -> bool:
            try:
                code = await client.publish(inbox_topic(device_id), payload, qos=1,
                                            properties=props,
                                            timeout=self.config.publish_timeout_s)
            except (MqttError, TimeoutError, OSError) as exc:
                log.info("refusal notice not sent", extra={"device": device_id,
                                                           "error": type(exc).__name__})
                return False
            return not code.is_failure

        results = await asyncio.gather(*(one(d, p) for d, p in pending))
        sent = sum(results)
        self.stats["sent"] += sent
        self.stats["failed"] += len(results) - sent
        return sent
