"""AsyncClient: connect, publish (awaiting PUBACK and its reason code), subscribe, receive."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:  # paho defines its socket protocol for type checkers only
    from paho.mqtt.client import SocketLike as _Socket

MISC_INTERVAL_S = 1.0  # paho's keepalive and retry timer; its own loop uses the same cadence
_M = TypeVar("_M")  # the message type of a client


class MqttError(Exception):
    """An MQTT operation failed; ``reason_code`` is the broker's or paho's code when known.

        MqttError
        └── MqttTimeout (also TimeoutError): no answer from the broker in time
    """

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class MqttTimeout(MqttError, TimeoutError):
    """The broker did not answer within the timeout."""


class MessageQueue(asyncio.Queue[_M]):
    """The received messages. Its bound is enforced by its client, which stops reading the
    socket when the queue holds ``limit`` messages and starts again when a consumer has taken
    it below ``resume_at``: nothing received is ever refused. ``put_nowait`` never raises."""

    def __init__(self, limit: int, on_taken: Callable[[], None]) -> None:
        super().__init__()  # unbounded here: a message paho has read must find room
        self.limit = limit
        # Some hysteresis: not one add_reader/remove_reader pair per message at the limit.
        self.resume_at = max(1, limit - max(1, limit // 4))
        self._on_taken = on_taken

    def _get(self) -> _M:  # asyncio's hook for subclasses, as PriorityQueue's
        message: _M = super()._get()
        if len(self._queue) < self.resume_at:  # type: ignore[attr-defined]
            self._on_taken()
        return message


class AsyncClient:
    """A paho ``Client`` whose network I/O runs on the current asyncio loop.

    Create it inside a running loop. Received messages go to ``messages``, which holds about
    ``queue_size`` at most: when it is full the client stops reading its socket (back-
    pressure: TCP then holds the broker back) until a consumer takes some, so nothing received
    is dropped. It may go over by the packets paho reads in one call (one, plus one per
    message of ours in flight). With MQTT v5 the broker should never send more than the
    Receive Maximum of CONNECT unacknowledged; Mosquitto 2.0.11 stops honouring it after the
    first acks, so the queue, not the broker, is the bound.

    A pause longer than the keepalive ends the connection: paho, reading nothing, misses the
    PINGRESP. With ``manual_ack`` that loses nothing (unacked messages come back on the next
    connection); a consumer that stops for that long has stopped anyway.
    """

    def __init__(self, client: mqtt.Client, *, queue_size: int = 10_000) -> None:
        self.paho = client
        self.messages: MessageQueue[mqtt.MQTTMessage] = MessageQueue(queue_size,
                                                                      self._resume_reading)
        self.pauses = 0  # times the queue filled and reading stopped
        self._paused = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connected: asyncio.Future[ReasonCode] | None = None
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._subscribed: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc: asyncio.TimerHandle | None = None
        self._sock: _Socket | None = None
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.on_disconnect: Callable[[ReasonCode | int], None] | None = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    @property
    def is_connected(self) -> bool:
        return not self.disconnected.is_set()

    async def connect(self, host: str, port: int, *, keepalive: int = 60,
                      clean_start: bool = True, properties: Properties | None = None,
                      timeout: float = 10.0) -> ReasonCode:
        """Connect and wait for a successful CONNACK; raises MqttError or MqttTimeout."""
        self._connected = self._loop.create_future()
        try:
            # paho's TCP connect and TLS handshake block: keep them off the loop.
            await asyncio.wait_for(self._loop.run_in_executor(
                None, lambda: self.paho.connect(host, port, keepalive, clean_start=clean_start,
                                                properties=properties)), timeout)
        except (OSError, ssl.SSLError) as exc:
            self._close_quietly()
            raise MqttError(f"cannot connect to {host}:{port}: {exc}") from exc
        except TimeoutError:
            self._close_quietly()
            raise MqttTimeout(f"no TLS/TCP connection to {host}:{port} in {timeout}s") from None
        self.disconnected.clear()
        self._schedule_misc()
        try:
            code = await asyncio.wait_for(self._connected, timeout)
        except TimeoutError:
            self._close_quietly()
            raise MqttTimeout(f"no CONNACK from {host}:{port} in {timeout}s") from None
        except MqttError:
            self._close_quietly()  # e.g. the TLS alert of a refused certificate
            raise
        if code.is_failure:
            self._close_quietly()
            raise MqttError(f"connection refused: {code}", code.value)
        return code

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      properties: Properties | None = None, timeout: float = 10.0,
                      retain: bool = False) -> ReasonCode:
        """Publish and wait for the PUBACK; returns its reason code (a failure is not raised:
        a refused message is the caller's to keep). Raises MqttError when not delivered."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish failed: {mqtt.error_string(info.rc)}", int(info.rc))
        if qos == 0:
            return ReasonCode(PacketTypes.PUBACK, identifier=0)
        future = self._pending[info.mid] = self._loop.create_future()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MqttTimeout(f"no PUBACK for message {info.mid} in {timeout}s") from None
        finally:
            self._pending.pop(info.mid, None)

    async def subscribe(self, topic: str, *, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK; raises MqttError when the broker refuses."""
        result, mid = self.paho.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe failed: {mqtt.error_string(result)}", int(result))
        future = self._subscribed[mid] = self._loop.create_future()
        try:
            codes = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MqttTimeout(f"no SUBACK for {topic} in {timeout}s") from None
        finally:
            self._subscribed.pop(mid, None)
        if any(code.is_failure for code in codes):
            raise MqttError(f"subscription to {topic} refused: {codes[0]}", codes[0].value)

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """Acknowledge a received message (only meaningful with ``manual_ack``)."""
        self.paho.ack(message.mid, message.qos)

    async def disconnect(self, timeout: float = 5.0,
                         properties: Properties | None = None) -> None:
        """Send DISCONNECT (with ``properties``) and wait until the socket is closed."""
        if self.disconnected.is_set():
            self._close_quietly()
            return
        self.paho.disconnect(properties=properties)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.disconnected.wait(), timeout)
        self._close_quietly()

    # -- socket watching: every callback below runs in the loop thread --------------------

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        # paho calls the socket callbacks from connect(), which runs in an executor thread.
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: _Socket) -> None:
        def watch() -> None:
            self._sock = sock
            if not self._paused:  # else the first take below the limit starts reading
                self._loop.add_reader(sock, self._on_readable)
        self._call_in_loop(watch)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: _Socket) -> None:
        def unwatch() -> None:
            # A socket closed already (fd -1) was unwatched before it closed: paho reports
            # it again when it collects a client whose connection _close_quietly ended.
            with contextlib.suppress(ValueError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            if self._sock is sock:
                self._sock = None
        self._call_in_loop(unwatch)

    def _on_socket_register_write(self, _c: mqtt.Client, _u: Any, sock: _Socket) -> None:
        self._call_in_loop(lambda: self._loop.add_writer(sock, self._on_writable))

    def _on_socket_unregister_write(self, _c: mqtt.Client, _u: Any, sock: _Socket) -> None:
        def unwatch() -> None:
            with contextlib.suppress(ValueError):  # closed already: see _on_socket_close
                self._loop.remove_writer(sock)
        self._call_in_loop(unwatch)

    def _on_readable(self) -> None:
        # A TLS record can hold several MQTT packets: read until OpenSSL's buffer is empty,
        # or the socket would never become readable again for the packets already decrypted.
        while not self._paused:
            rc = self.paho.loop_read()
            sock = self.paho.socket()
            if (rc != mqtt.MQTT_ERR_SUCCESS or not isinstance(sock, ssl.SSLSocket)
                    or sock.pending() == 0):
                return

    def _pause_reading(self) -> None:
        self._paused = True
        self.pauses += 1
        if self._sock is not None:
            self._loop.remove_reader(self._sock)

    def _resume_reading(self) -> None:
        # Called by MessageQueue._get, in a consumer's get: the reading itself is scheduled,
        # never done here, or paho's callbacks would put into the queue inside its get.
        if not self._paused:
            return
        self._paused = False
        if self._sock is not None:
            self._loop.add_reader(self._sock, self._on_readable)
            # Packets OpenSSL decrypted before the pause make the socket no more readable.
            self._loop.call_soon(self._on_readable)

    def _on_writable(self) -> None:
        self.paho.loop_write()

    def _schedule_misc(self) -> None:
        def tick() -> None:
            if self.disconnected.is_set():
                self._misc = None
                return
            self.paho.loop_misc()
            self._misc = self._loop.call_later(MISC_INTERVAL_S, tick)
        if self._misc is None:
            self._misc = self._loop.call_later(MISC_INTERVAL_S, tick)

    def _close_quietly(self) -> None:
        sock = self._sock
        if sock is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            self._sock = None
        with contextlib.suppress(Exception):
            self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self.disconnected.set()

    # -- protocol callbacks -----------------------------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, code: ReasonCode,
                    _props: Properties | None) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(code)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, code: ReasonCode | int,
                       _props: Properties | None) -> None:
        self.disconnected.set()
        error = MqttError(f"disconnected: {code}", getattr(code, "value", None))
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(error)
        for subscribing in self._subscribed.values():
            if not subscribing.done():
                subscribing.set_exception(error)
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(error)
        if self.on_disconnect is not None:
            self.on_disconnect(code)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, code: ReasonCode,
                    _props: Properties | None) -> None:
        future = self._pending.get(mid)  # a PUBACK is read in this thread, after publish()
        if future is not None and not future.done():
            future.set_result(code)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode],
                      _props: Properties | None) -> None:
        future = self._subscribed.get(mid)
        if future is not None and not future.done():
            future.set_result(codes)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put_nowait(message)
        if not self._paused and self.messages.qsize() >= self.messages.limit:
            self._pause_reading()
