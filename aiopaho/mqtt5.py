"""The MQTT v5 packets the bridge exchanges, encoded and parsed without I/O.

A subset, on purpose: what a subscriber at QoS 1 that also publishes notices needs (CONNECT,
CONNACK, SUBSCRIBE, SUBACK, PUBLISH both ways at QoS 0/1, PUBACK both ways, PINGREQ,
PINGRESP, DISCONNECT both ways). Anything else from the broker is a ``ProtocolError``, as is
any malformed packet: the connection is then to be closed (MQTT v5, 4.13).

The hot path is an incoming PUBLISH: it is parsed from a memoryview with struct, and only the
properties the bridge reads (Content Type, User Property) are decoded; the others are checked
and skipped by their known sizes. A Topic Alias is refused: we never send a Topic Alias
Maximum, so the broker may not use one (3.3.2.3.4).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from aiopaho.client import MqttError

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

# Property identifiers (2.2.2.2) by the size of their value.
CONTENT_TYPE = 0x03
USER_PROPERTY = 0x26
TOPIC_ALIAS = 0x23
MESSAGE_EXPIRY_INTERVAL = 0x02
SESSION_EXPIRY_INTERVAL = 0x11
SERVER_KEEP_ALIVE = 0x13
RECEIVE_MAXIMUM = 0x21
MAXIMUM_PACKET_SIZE = 0x27
REASON_STRING = 0x1F
_BYTE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_UINT16 = frozenset({0x13, 0x21, 0x22, 0x23})
_UINT32 = frozenset({0x02, 0x11, 0x18, 0x27})
_VARINT = frozenset({0x0B})
_STRING = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_BINARY = frozenset({0x09, 0x16})
_PAIR = frozenset({0x26})
_MULTIPLE = frozenset({0x26, 0x0B})  # the only ones that may appear more than once
# What a PUBLISH may carry (3.3.2.3): Payload Format, Message Expiry, Topic Alias, Response
# Topic, Correlation Data, User Property, Subscription Identifier, Content Type.
_PUBLISH_PROPERTIES = frozenset({0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03})

MAX_VARINT = 268_435_455  # four bytes of seven bits (1.5.5)
# A packet larger than this is refused before it is buffered whole: the broker's own limit
# (devices.broker_config.MAX_PACKET_BYTES, 260 KiB) with room to spare.
DEFAULT_MAX_PACKET = 1 << 22

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PUBACK = struct.Struct("!BBH")
_U16_FROM = _U16.unpack_from
_U32_FROM = _U32.unpack_from


class ProtocolError(MqttError):
    """The broker sent what MQTT v5 (or the subset we speak) does not allow: the connection
    must be closed. Its ``reason_code`` is 0x81 (Malformed Packet) or 0x82 (Protocol Error),
    ready for the DISCONNECT that says why."""

    def __init__(self, message: str, reason_code: int = 0x81) -> None:
        super().__init__(message, reason_code)


class PublishProperties:
    """The properties of a received PUBLISH the bridge reads, with paho's attribute names.
    An attribute the packet did not carry is absent (``getattr(p, "ContentType", default)``),
    as on paho's ``Properties``."""

    __slots__ = ("ContentType", "UserProperty")

    ContentType: str
    UserProperty: list[tuple[str, str]]

    def __repr__(self) -> str:
        shown = {k: getattr(self, k) for k in self.__slots__ if hasattr(self, k)}
        return f"PublishProperties({shown})"


class Message:
    """A received PUBLISH, shaped as the paho ``MQTTMessage`` attributes the bridge reads.
    ``timestamp`` (``time.monotonic()`` at arrival) and ``link`` (the connection it came on,
    so that it is never acked on another) are set by the client."""

    __slots__ = ("dup", "link", "mid", "payload", "properties", "qos", "retain", "timestamp",
                 "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, mid: int, dup: bool,
                 retain: bool, properties: PublishProperties) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.mid = mid
        self.dup = dup
        self.retain = retain
        self.properties = properties
        self.timestamp = 0.0
        self.link = 0

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic!r}, mid={self.mid}, qos={self.qos}, "
                f"{len(self.payload)} bytes, {self.properties!r})")


class ConnAck:
    __slots__ = ("properties", "reason_code", "session_present")

    def __init__(self, session_present: bool, reason_code: int,
                 properties: dict[int, Any]) -> None:
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = properties


class PubAck:
    __slots__ = ("packet_id", "properties", "reason_code")

    def __init__(self, packet_id: int, reason_code: int, properties: dict[int, Any]) -> None:
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties


class SubAck:
    __slots__ = ("packet_id", "properties", "reason_codes")

    def __init__(self, packet_id: int, reason_codes: list[int],
                 properties: dict[int, Any]) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes
        self.properties = properties


class PingResp:
    __slots__ = ()


class Disconnect:
    __slots__ = ("properties", "reason_code")

    def __init__(self, reason_code: int, properties: dict[int, Any]) -> None:
        self.reason_code = reason_code
        self.properties = properties


Packet = Message | ConnAck | PubAck | SubAck | PingResp | Disconnect
PING_RESP = PingResp()


# --- parsing ------------------------------------------------------------------------------


class Parser:
    """Incremental: ``feed`` it the bytes as they arrive, in any pieces, and it returns the
    packets they complete, PUBLISHes up to ``max_messages`` (the rest stay buffered for a
    later ``feed``, which may bring no bytes). Raises ``ProtocolError`` on malformed input,
    after which it is not to be fed again."""

    __slots__ = ("_buffer", "max_packet")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self._buffer = bytearray()
        self.max_packet = max_packet

    def feed(self, data: bytes, max_messages: int = 1 << 62) -> list[Packet]:
        buffer = self._buffer
        if data:
            buffer += data
        packets: list[Packet] = []
        end = len(buffer)
        pos = 0
        with memoryview(buffer) as view:
            while end - pos >= 2:
                first = buffer[pos]
                if first >> 4 == PUBLISH:
                    if not max_messages:
                        break
                    max_messages -= 1
                # The remaining length, a variable byte integer of at most four bytes.
                length = 0
                shift = 0
                i = pos + 1
                while True:
                    if i >= end:
                        length = -1  # incomplete
                        break
                    byte = buffer[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        if byte == 0 and shift:
                            raise ProtocolError("remaining length not in its shortest form")
                        break
                    shift += 7
                    if shift == 28:
                        raise ProtocolError("remaining length longer than four bytes")
                if length < 0:
                    break
                if i - pos + length > self.max_packet:
                    raise ProtocolError(f"packet of {length} bytes over the limit")
                if i + length > end:
                    break
                body = view[i:i + length]
                pos = i + length
                try:
                    packets.append(_parse(first, body))
                except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
                    # Bounds are checked where it is cheap; the rest falls here.
                    raise ProtocolError(f"malformed packet: {exc}") from None
                finally:
                    body.release()
        if pos:
            del buffer[:pos]
        return packets

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet."""
        return len(self._buffer)


def _parse(first: int, body: memoryview) -> Packet:
    kind = first >> 4
    if kind == PUBLISH:
        return _parse_publish(first, body)
    if first & 0x0F:
        raise ProtocolError(f"reserved flags set in packet type {kind}")
    n = len(body)
    if kind == PUBACK:
        if n < 2:
            raise ProtocolError("PUBACK too short")
        packet_id = _U16_FROM(body, 0)[0]
        if n == 2:
            return PubAck(packet_id, 0, {})
        properties = _properties(body, 3)[0] if n > 3 else {}
        return PubAck(packet_id, body[2], properties)
    if kind == SUBACK:
        packet_id = _U16_FROM(body, 0)[0]
        properties, pos = _properties(body, 2)
        if pos >= n:
            raise ProtocolError("SUBACK without a reason code")
        return SubAck(packet_id, list(body[pos:]), properties)
    if kind == CONNACK:
        if n < 3:
            raise ProtocolError("CONNACK too short")
        flags = body[0]
        if flags & 0xFE:
            raise ProtocolError("reserved CONNACK flags set")
        properties, pos = _properties(body, 2)
        if pos != n:
            raise ProtocolError("bytes after the CONNACK properties")
        return ConnAck(bool(flags & 1), body[1], properties)
    if kind == PINGRESP:
        if n:
            raise ProtocolError("PINGRESP with a body")
        return PING_RESP
    if kind == DISCONNECT:
        if n == 0:
            return Disconnect(0, {})
        properties = _properties(body, 1)[0] if n > 1 else {}
        return Disconnect(body[0], properties)
    raise ProtocolError(f"packet type {kind} not expected by this client", 0x82)


def _parse_publish(first: int, body: memoryview) -> Message:
    qos = (first >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    if qos == 2:
        raise ProtocolError("PUBLISH with QoS 2: we subscribe at QoS 1 at most", 0x82)
    dup = bool(first & 8)
    if dup and not qos:
        raise ProtocolError("DUP set on a QoS 0 PUBLISH")
    n = len(body)
    topic_end = 2 + _U16_FROM(body, 0)[0]
    if topic_end > n:
        raise ProtocolError("topic beyond the packet")
    topic = str(body[2:topic_end], "utf-8")
    if not topic or "\x00" in topic or "+" in topic or "#" in topic:
        # Empty: only with a Topic Alias, which we refuse anyway (3.3.2.1).
        raise ProtocolError(f"invalid topic name {topic!r}", 0x82)
    pos = topic_end
    mid = 0
    if qos:
        mid = _U16_FROM(body, pos)[0]
        if not mid:
            raise ProtocolError("packet identifier 0")
        pos += 2
    # The property length, a variable byte integer (inlined: this is the hot path).
    byte = body[pos]
    pos += 1
    length = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift == 28:
            raise ProtocolError("property length longer than four bytes")
        byte = body[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
    end = pos + length
    if end > n:
        raise ProtocolError("properties beyond the packet")
    properties = PublishProperties()
    if length:
        _publish_properties(body, pos, end, properties)
    return Message(topic, bytes(body[end:]), qos, mid, dup, bool(first & 1), properties)


def _publish_properties(body: memoryview, pos: int, end: int,
                        properties: PublishProperties) -> None:
    seen: set[int] = set()
    users: list[tuple[str, str]] | None = None
    while pos < end:
        ident = body[pos]
        pos += 1
        if ident == USER_PROPERTY:
            k_end = pos + 2 + _U16_FROM(body, pos)[0]
            v_end = k_end + 2 + _U16_FROM(body, k_end)[0]
            if v_end > end:
                raise ProtocolError("user property beyond the properties")
            pair = (str(body[pos + 2:k_end], "utf-8"), str(body[k_end + 2:v_end], "utf-8"))
            if users is None:
                users = properties.UserProperty = [pair]
            else:
                users.append(pair)
            pos = v_end
            continue
        if ident in seen and ident not in _MULTIPLE:
            raise ProtocolError(f"property {ident:#04x} more than once", 0x82)
        seen.add(ident)
        if ident == CONTENT_TYPE:
            s_end = pos + 2 + _U16_FROM(body, pos)[0]
            if s_end > end:
                raise ProtocolError("content type beyond the properties")
            properties.ContentType = str(body[pos + 2:s_end], "utf-8")
            pos = s_end
        elif ident == TOPIC_ALIAS:
            raise ProtocolError("topic alias: this client allows none", 0x94)
        elif ident not in _PUBLISH_PROPERTIES:
            raise ProtocolError(f"property {ident:#04x} not allowed in PUBLISH")
        else:
            pos = _skip_property(body, ident, pos)
    if pos != end:
        raise ProtocolError("property beyond the property length")


def _skip_property(body: memoryview, ident: int, pos: int) -> int:
    """The position after the value of property ``ident``, which starts at ``pos``."""
    if ident in _BYTE:
        return pos + 1
    if ident in _UINT16:
        return pos + 2
    if ident in _UINT32:
        return pos + 4
    if ident in _VARINT:
        return _varint(body, pos)[1]
    if ident in _STRING:
        s_end = pos + 2 + _U16_FROM(body, pos)[0]
        str(body[pos + 2:s_end], "utf-8")  # checked, as the spec asks, but not kept
        return int(s_end)
    if ident in _BINARY:
        return pos + 2 + int(_U16_FROM(body, pos)[0])
    raise ProtocolError(f"unknown property {ident:#04x}")


def _properties(body: memoryview, pos: int) -> tuple[dict[int, Any], int]:
    """The properties of a control packet from ``pos``, by identifier (User Property: a list
    of pairs), and the position after them."""
    length, pos = _varint(body, pos)
    end = pos + length
    if end > len(body):
        raise ProtocolError("properties beyond the packet")
    found: dict[int, Any] = {}
    while pos < end:
        ident = body[pos]
        pos += 1
        value: Any
        if ident in _BYTE:
            value = body[pos]
            pos += 1
        elif ident in _UINT16:
            value = _U16_FROM(body, pos)[0]
            pos += 2
        elif ident in _UINT32:
            value = _U32_FROM(body, pos)[0]
            pos += 4
        elif ident in _VARINT:
            value, pos = _varint(body, pos)
        elif ident in _STRING or ident in _BINARY:
            v_end = pos + 2 + _U16_FROM(body, pos)[0]
            raw = bytes(body[pos + 2:v_end])
            value = raw if ident in _BINARY else raw.decode("utf-8")
            pos = v_end
        elif ident in _PAIR:
            k_end = pos + 2 + _U16_FROM(body, pos)[0]
            v_end = k_end + 2 + _U16_FROM(body, k_end)[0]
            value = (str(body[pos + 2:k_end], "utf-8"), str(body[k_end + 2:v_end], "utf-8"))
            pos = v_end
        else:
            raise ProtocolError(f"unknown property {ident:#04x}")
        if pos > end:
            raise ProtocolError("property beyond the property length")
        if ident in _MULTIPLE:
            found.setdefault(ident, []).append(value)
        elif ident in found:
            raise ProtocolError(f"property {ident:#04x} more than once", 0x82)
        else:
            found[ident] = value
    return found, end


def _varint(body: memoryview | bytes, pos: int) -> tuple[int, int]:
    """A variable byte integer at ``pos``: (value, position after it)."""
    value = 0
    for shift in (0, 7, 14, 21):
        byte = body[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ProtocolError("variable byte integer longer than four bytes")


# --- encoding -----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (1.5.5)."""
    if not 0 <= n <= MAX_VARINT:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65,535 bytes")
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def encode_properties(*, payload_format: int | None = None,
                      message_expiry: int | None = None, content_type: str | None = None,
                      session_expiry: int | None = None,
                      receive_maximum: int | None = None,
                      user_properties: Sequence[tuple[str, str]] = ()) -> bytes:
    """A property block, its length first; in paho's order (by identifier), so that the
    bytes are paho's own for the same properties."""
    out = b""
    if payload_format is not None:
        out += bytes([0x01, payload_format])
    if message_expiry is not None:
        out += bytes([MESSAGE_EXPIRY_INTERVAL]) + _U32.pack(message_expiry)
    if content_type is not None:
        out += bytes([CONTENT_TYPE]) + _string(content_type)
    if session_expiry is not None:
        out += bytes([SESSION_EXPIRY_INTERVAL]) + _U32.pack(session_expiry)
    if receive_maximum is not None:
        if not 0 < receive_maximum <= 0xFFFF:
            raise ValueError("receive maximum out of 1..65535")
        out += bytes([RECEIVE_MAXIMUM]) + _U16.pack(receive_maximum)
    for key, value in user_properties:
        out += bytes([USER_PROPERTY]) + _string(key) + _string(value)
    return varint(len(out)) + out


NO_PROPERTIES = b"\x00"


def encode_connect(client_id: str, *, keepalive: int = 60, clean_start: bool = True,
                   properties: bytes = NO_PROPERTIES) -> bytes:
    """CONNECT, MQTT v5, no will, no user name or password (identity is the certificate);
    ``properties`` from ``encode_properties``."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive out of 0..65535")
    body = (b"\x00\x04MQTT\x05" + bytes([0x02 if clean_start else 0x00])
            + _U16.pack(keepalive) + properties + _string(client_id))
    return _packet(CONNECT << 4, body)


def encode_subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    """SUBSCRIBE to one filter; its options are the maximum QoS only."""
    if not 0 <= qos <= 2:
        raise ValueError("QoS out of 0..2")
    body = _U16.pack(packet_id) + NO_PROPERTIES + _string(topic_filter) + bytes([qos])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0,
                   retain: bool = False, dup: bool = False,
                   properties: bytes = NO_PROPERTIES) -> bytes:
    """PUBLISH at QoS 0 or 1; ``properties`` from ``encode_properties`` (or paho's
    ``Properties.pack()``, which has the same form)."""
    if qos not in (0, 1):
        raise ValueError("this client publishes at QoS 0 or 1")
    if qos and not 0 < packet_id <= 0xFFFF:
        raise ValueError("a QoS 1 PUBLISH needs a packet identifier in 1..65535")
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    head = _string(topic) + (_U16.pack(packet_id) if qos else b"")
    return _packet(first, head + properties + payload)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK, success: the reason code and properties left out (3.4.2.1)."""
    return _PUBACK.pack(PUBACK << 4, 2, packet_id)


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """Consecutive PUBACKs, success, in one buffer."""
    pack = _PUBACK.pack
    first = PUBACK << 4
    return b"".join([pack(first, 2, mid) for mid in packet_ids])


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])


def encode_disconnect(reason_code: int = 0, properties: bytes = NO_PROPERTIES) -> bytes:
    """DISCONNECT; the short form (no body) when it says only 'normal disconnection'."""
    if reason_code == 0 and properties == NO_PROPERTIES:
        return bytes([DISCONNECT << 4, 0])
    return _packet(DISCONNECT << 4, bytes([reason_code]) + properties)
