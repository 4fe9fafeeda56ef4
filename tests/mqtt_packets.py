"""Raw MQTT v5 packets, for tests that must send what no client library would."""

from __future__ import annotations

import struct


def varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(text: bytes) -> bytes:
    """A length-prefixed UTF-8 string (or binary data)."""
    return struct.pack("!H", len(text)) + text


Will = tuple[bytes, bytes, int, bool, bytes]  # topic, message, QoS, retain, properties


def connect_packet(client_id: bytes, will: Will | None) -> bytes:
    """CONNECT, MQTT v5, clean start, keepalive 30 s, with an optional will."""
    flags = 0x02  # clean start
    payload = string(client_id)
    if will is not None:
        topic, message, qos, retain, props = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += varint(len(props)) + props + string(topic) + string(message)
    body = string(b"MQTT") + bytes([5, flags]) + struct.pack("!H", 30) + varint(0) + payload
    return bytes([0x10]) + varint(len(body)) + body
