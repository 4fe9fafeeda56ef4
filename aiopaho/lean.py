"""LeanClient: the bridge's MQTT v5 subscriber on an asyncio transport, without paho.

The same interface as ``AsyncClient`` (the part of it the bridge uses), over our own codec
(``aiopaho.mqtt5``): asyncio's TLS transport hands the bytes to a ``Parser``; each PUBLISH
becomes a small ``Message`` put in ``messages``. Profiling put paho at ~72 us a message
(its TLS reads, packet dispatch and property objects) plus the garbage they make; here a
read of many packets costs one parse loop. Devices and the other services keep paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from aiopaho import mqtt5
from aiopaho.client import MessageQueue, MqttError, MqttTimeout
from aiopaho.mqtt5 import Message, ProtocolError

CONNECTION_LOST = 7  # the code ``on_disconnect`` gets for a lost connection (paho's)
_KEEPALIVE_TICK_S = 0.5  # how often the keepalive timer looks; a fraction of any keepalive
_DEFAULT_SERVER_RECEIVE_MAXIMUM = 65_535  # the broker's, when its CONNACK names none (3.2.2.3.3)


def _code(packet_type: int, value: int) -> ReasonCode:
    try:
        return ReasonCode(packet_type, identifier=value)
    except (KeyError, ValueError):
        raise ProtocolError(f"reason code {value:#04x} invalid in packet type {packet_type}",
                            0x82) from None


def _properties_bytes(properties: Properties | None, **fallback: Any) -> bytes:
    """A paho ``Properties`` as a property block (its own ``pack``), or none."""
    if properties is None:
        return mqtt5.encode_properties(**fallback) if fallback else mqtt5.NO_PROPERTIES
    return bytes(properties.pack())


class _Link(asyncio.Protocol):
    """One connection: hands its bytes and its end to the client, which ignores a link
    that is not its current one."""

    def __init__(self, client: LeanClient, number: int) -> None:
        self.client = client
        self.number = number
        self.parser = mqtt5.Parser()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.client._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.client._lost(self, exc)


class LeanClient:
    """An MQTT v5 client of the subset the bridge needs, with ``AsyncClient``'s interface.

    Create it inside a running loop. Received messages go to ``messages``, which never holds
    more than ``queue_size``: when full, the client stops parsing (what it read waits in the
    parser's buffer) and reading its transport (``pause_reading``: TLS, then TCP, hold the
    broker back) until a consumer takes it below its resume mark; nothing received is
    dropped.

    Errors: ``MqttError`` (``reason_code``: the broker's, when it gave one), ``MqttTimeout``
    when the broker does not answer in time, ``ProtocolError`` when it breaks the protocol
    (the connection is then closed).
    """

    def __init__(self, client_id: str, context: ssl.SSLContext, *,
                 queue_size: int = 10_000) -> None:
        self.client_id = client_id
        self.context = context
        self._loop = asyncio.get_running_loop()
        self.messages: MessageQueue[Message] = MessageQueue(queue_size, self._resume_reading)
        self.pauses = 0  # times the queue filled and reading stopped
        self._paused = False
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.on_disconnect: Callable[[ReasonCode | int], None] | None = None
        self.session_present = False
        self._numbers = itertools.count(1)
        self._link: _Link | None = None
        self._connack: asyncio.Future[mqtt5.ConnAck] | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._subscribing: dict[int, asyncio.Future[list[int]]] = {}
        self._next_id = 0
        self._inflight = asyncio.Semaphore(_DEFAULT_SERVER_RECEIVE_MAXIMUM)
        self._keepalive = 0.0
        self._last_write = 0.0
        self._last_read = 0.0
        self._ping_sent: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def is_connected(self) -> bool:
        return not self.disconnected.is_set()

    # -- the interface ----------------------------------------------------------------------

    async def connect(self, host: str, port: int, *, keepalive: int = 60,
                      clean_start: bool = True, properties: Properties | None = None,
                      timeout: float = 10.0) -> ReasonCode:
        """Connect over TLS and wait for a successful CONNACK; raises MqttError (refused:
        with the broker's reason code) or MqttTimeout. ``properties``: a paho CONNECT
        ``Properties`` (Session Expiry Interval, Receive Maximum, ...)."""
        if self._link is not None:
            self._close_link(self._link)
        link = _Link(self, next(self._numbers))
        self._link = link
        try:
            await asyncio.wait_for(self._loop.create_connection(
                lambda: link, host, port, ssl=self.context, server_hostname=host,
                ssl_handshake_timeout=timeout), timeout)
        except TimeoutError:
            self._close_link(link)
            raise MqttTimeout(f"no TLS/TCP connection to {host}:{port} in {timeout}s") from None
        except (OSError, ssl.SSLError) as exc:
            self._close_link(link)
            raise MqttError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._connack = self._loop.create_future()
        self._keepalive = float(keepalive)
        self._write(link, mqtt5.encode_connect(
            self.client_id, keepalive=keepalive, clean_start=clean_start,
            properties=_properties_bytes(properties)))
        try:
            connack = await asyncio.wait_for(self._connack, timeout)
        except TimeoutError:
            self._close_link(link)
            raise MqttTimeout(f"no CONNACK from {host}:{port} in {timeout}s") from None
        except MqttError:
            self._close_link(link)  # e.g. the TLS alert of a refused certificate
            raise
        finally:
            self._connack = None
        code = _code(PacketTypes.CONNACK, connack.reason_code)
        if code.is_failure:
            self._close_link(link)
            raise MqttError(f"connection refused: {code}", code.value)
        if link is not self._link or link.transport is None or link.transport.is_closing():
            raise MqttError("connection lost just after its CONNACK", CONNECTION_LOST)
        self.session_present = connack.session_present
        server_keepalive = connack.properties.get(mqtt5.SERVER_KEEP_ALIVE)
        if server_keepalive is not None:  # the broker's word overrides ours (3.2.2.3.14)
            self._keepalive = float(server_keepalive)
        self._inflight = asyncio.Semaphore(connack.properties.get(
            mqtt5.RECEIVE_MAXIMUM, _DEFAULT_SERVER_RECEIVE_MAXIMUM))
        self._ping_sent = None
        self.disconnected.clear()
        if self._paused:  # a stale queue still full: its first take below the mark resumes
            link.transport.pause_reading()
        if self._keepalive:
            self._timer = self._loop.call_later(_KEEPALIVE_TICK_S, self._tick, link)
        return code

    async def subscribe(self, topic: str, *, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe to one filter and wait for the SUBACK; raises MqttError (with the
        broker's reason code) when refused, MqttTimeout when not answered."""
        link = self._current()
        packet_id = self._packet_id()
        future = self._subscribing[packet_id] = self._loop.create_future()
        try:
            self._write(link, mqtt5.encode_subscribe(packet_id, topic, qos))
            codes = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MqttTimeout(f"no SUBACK for {topic} in {timeout}s") from None
        finally:
            self._subscribing.pop(packet_id, None)
        refused = [c for c in codes if c >= 0x80]
        if refused:
            raise MqttError(f"subscription to {topic} refused: "
                            f"{_code(PacketTypes.SUBACK, refused[0])}", refused[0])

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      properties: Properties | None = None, timeout: float = 10.0,
                      retain: bool = False) -> ReasonCode:
        """Publish and, at QoS 1, wait for the PUBACK; returns its reason code (a failure is
        not raised: a refused message is the caller's to keep). Raises MqttError when not
        delivered (not connected, connection lost), MqttTimeout when not acknowledged."""
        link = self._current()
        props = _properties_bytes(properties)
        if qos == 0:
            self._write(link, mqtt5.encode_publish(topic, payload, retain=retain,
                                                   properties=props))
            return ReasonCode(PacketTypes.PUBACK, identifier=0)
        if qos != 1:
            raise MqttError(f"this client publishes at QoS 0 or 1, not {qos}")
        deadline = self._loop.time() + timeout
        inflight = self._inflight  # a reconnection replaces it: release the one acquired
        try:
            # The broker's Receive Maximum: more in flight and it would disconnect us.
            await asyncio.wait_for(inflight.acquire(), timeout)
        except TimeoutError:
            raise MqttTimeout(f"no room in flight for a message in {timeout}s") from None
        packet_id = self._packet_id()
        future = self._pending[packet_id] = self._loop.create_future()
        try:
            link = self._current()  # the wait above may have outlived the connection
            self._write(link, mqtt5.encode_publish(topic, payload, qos=1, packet_id=packet_id,
                                                   retain=retain, properties=props))
            value = await asyncio.wait_for(future, max(0.0, deadline - self._loop.time()))
        except TimeoutError:
            raise MqttTimeout(f"no PUBACK for message {packet_id} in {timeout}s") from None
        finally:
            self._pending.pop(packet_id, None)
            inflight.release()
        return _code(PacketTypes.PUBACK, value)

    def ack(self, message: Message) -> None:
        """Acknowledge a received QoS 1 message (on the connection it came on: after a
        reconnection the broker sends it again, and its packet id may be another's)."""
        link = self._link
        if message.qos == 1 and link is not None and message.link == link.number:
            self._write_quietly(link, mqtt5.encode_puback(message.mid))

    def ack_many(self, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages``: all their PUBACKs in one write (one TLS record for the
        batch, rather than one each)."""
        link = self._link
        if link is None:
            return
        number = link.number
        ids = [m.mid for m in messages if m.qos == 1 and m.link == number]
        if ids:
            self._write_quietly(link, mqtt5.encode_pubacks(ids))

    async def disconnect(self, timeout: float = 5.0,
                         properties: Properties | None = None) -> None:
        """Send DISCONNECT (with ``properties``, e.g. Session Expiry Interval 0 to end the
        session) and wait until the connection is closed."""
        link = self._link
        if link is None:
            self.disconnected.set()
            return
        transport = link.transport
        if transport is not None and not transport.is_closing() and self.is_connected:
            transport.write(mqtt5.encode_disconnect(0, _properties_bytes(properties)))
            transport.close()  # flushes the DISCONNECT, then TLS close_notify
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.lost), timeout)
        self._close_link(link)

    # -- the connection ----------------------------------------------------------------------

    def _current(self) -> _Link:
        link = self._link
        if (link is None or self.disconnected.is_set() or link.transport is None
                or link.transport.is_closing()):
            raise MqttError("not connected", CONNECTION_LOST)
        return link

    def _packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending and self._next_id not in self._subscribing:
                return self._next_id
        raise MqttError("no free packet identifier")

    def _write(self, link: _Link, data: bytes) -> None:
        transport = link.transport
        if transport is None or transport.is_closing():
            raise MqttError("not connected", CONNECTION_LOST)
        transport.write(data)
        self._last_write = time.monotonic()

    def _write_quietly(self, link: _Link, data: bytes) -> None:
        # Acks on a closing connection are moot: the broker sends the messages again.
        with contextlib.suppress(MqttError):
            self._write(link, data)

    def _received(self, link: _Link, data: bytes) -> None:
        if link is not self._link:
            return
        queue = self.messages
        try:
            # No more than the queue has room for: the others wait in the parser's buffer
            # (at most a read's worth: the transport is paused below) until it has.
            packets = link.parser.feed(data, max(0, queue.limit - queue.qsize()))
        except ProtocolError as exc:
            self._abort(link, exc)
            return
        now = time.monotonic()
        self._last_read = now
        number = link.number
        for packet in packets:
            if type(packet) is Message:
                packet.timestamp = now
                packet.link = number
                queue.put_nowait(packet)
            else:
                try:
                    self._control(link, packet)
                except ProtocolError as exc:
                    self._abort(link, exc)
                    return
                if link is not self._link:  # a DISCONNECT from the broker: the rest is moot
                    return
        if not self._paused and queue.qsize() >= queue.limit:
            self._pause_reading()

    def _control(self, link: _Link, packet: mqtt5.Packet) -> None:
        if isinstance(packet, mqtt5.PubAck):
            future = self._pending.get(packet.packet_id)
            if future is not None and not future.done():
                future.set_result(packet.reason_code)
        elif isinstance(packet, mqtt5.PingResp):
            self._ping_sent = None
        elif isinstance(packet, mqtt5.SubAck):
            subscribing = self._subscribing.get(packet.packet_id)
            if subscribing is not None and not subscribing.done():
                subscribing.set_result(packet.reason_codes)
        elif isinstance(packet, mqtt5.ConnAck):
            if self._connack is None or self._connack.done():
                raise ProtocolError("CONNACK on an open connection", 0x82)
            self._connack.set_result(packet)
        elif isinstance(packet, mqtt5.Disconnect):
            reason = packet.properties.get(mqtt5.REASON_STRING, "")
            self._end(link, _code(PacketTypes.DISCONNECT, packet.reason_code),
                      MqttError(f"disconnected by the broker: reason {packet.reason_code:#04x}"
                                f" {reason}".rstrip(), packet.reason_code))

    def _pause_reading(self) -> None:
        self._paused = True
        self.pauses += 1
        link = self._link
        if link is not None and link.transport is not None and self.is_connected:
            link.transport.pause_reading()

    def _resume_reading(self) -> None:
        # Called by MessageQueue._get, inside a consumer's get: the parsing is scheduled,
        # never done here, or messages would be put into the queue inside its get.
        if not self._paused:
            return
        self._paused = False
        self._loop.call_soon(self._resume, self._link)

    def _resume(self, link: _Link | None) -> None:
        if link is None or link is not self._link:
            return
        self._received(link, b"")  # first the messages buffered while paused: may pause again
        if not self._paused and link is self._link and link.transport is not None \
                and not link.transport.is_closing():
            link.transport.resume_reading()

    def _tick(self, link: _Link) -> None:
        """The keepalive: a PINGREQ when nothing was written for the keepalive; the link
        closed when no PINGRESP came for as long (not while reading is paused: the answer
        may be waiting behind the messages we chose not to read)."""
        if link is not self._link or self.disconnected.is_set():
            return
        now = time.monotonic()
        if self._ping_sent is not None:
            if (now - self._ping_sent >= self._keepalive and not self._paused
                    and self._last_read < self._ping_sent):
                self._abort(link, MqttTimeout(f"no PINGRESP in {self._keepalive}s"))
                return
        elif now - self._last_write >= self._keepalive:
            self._ping_sent = now
            with contextlib.suppress(MqttError):
                self._write(link, mqtt5.PINGREQ_PACKET)
        self._timer = self._loop.call_later(_KEEPALIVE_TICK_S, self._tick, link)

    def _abort(self, link: _Link, error: MqttError) -> None:
        """Close ``link`` for ``error``: a DISCONNECT saying why when it is the broker's
        fault, then the transport."""
        transport = link.transport
        if isinstance(error, ProtocolError) and transport is not None \
                and not transport.is_closing():
            transport.write(mqtt5.encode_disconnect(error.reason_code or 0x81))
        self._end(link, error.reason_code if error.reason_code is not None
                  else CONNECTION_LOST, error)

    def _lost(self, link: _Link, exc: Exception | None) -> None:
        error = MqttError(f"connection lost: {exc}" if exc else "connection closed",
                          CONNECTION_LOST)
        self._end(link, CONNECTION_LOST, error)

    def _end(self, link: _Link, code: ReasonCode | int, error: MqttError) -> None:
        """The end of ``link``, whatever ended it: its waiters fail with ``error``, the
        client is disconnected, ``on_disconnect`` hears it once."""
        if link is not self._link:
            return
        self._link = None
        was_connected = not self.disconnected.is_set()
        self.disconnected.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if link.transport is not None and not link.transport.is_closing():
            link.transport.close()
        for future in (*self._pending.values(), *self._subscribing.values(), self._connack):
            if future is not None and not future.done():
                future.set_exception(error)
        if was_connected and self.on_disconnect is not None:
            self.on_disconnect(code)

    def _close_link(self, link: _Link) -> None:
        """Close ``link`` now (its TLS not ended politely) and forget it."""
        transport = link.transport
        self._end(link, CONNECTION_LOST, MqttError("connection closed", CONNECTION_LOST))
        if transport is not None and not link.lost.done():
            transport.abort()
