"""aiopaho.mqtt5, LeanClient's codec: its packets are paho's byte for byte, it parses what it
encodes, it gives the same packets however the stream is cut, and on any input at all it
returns packets or raises ProtocolError: never another exception, never a hang."""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import mqtt5
from aiopaho.mqtt5 import Message, Parser, ProtocolError
from tests.mqtt_packets import string, varint

PROPS = settings(database=None, deadline=None, max_examples=400,
                 suppress_health_check=[HealthCheck.too_slow])
TOPIC = "devices/watch-0a1b/telemetry"
# Text MQTT can carry: UTF-8 has no surrogates (and a topic name no wildcard, no NUL).
CHARS = st.characters(blacklist_categories=("Cs",))
TOPIC_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="+#\x00")


class NoSocket:
    """Stands for a socket where paho only checks that it has one."""

    def close(self) -> None:
        pass


class Recorder(mqtt.Client):
    """A paho client that keeps the packets it would send, unconnected."""

    def __init__(self) -> None:
        super().__init__(mqtt.CallbackAPIVersion.VERSION2, client_id="svc-bridge-1",
                         protocol=mqtt.MQTTv5)
        self.sent: list[bytes] = []
        self._sock = NoSocket()  # type: ignore[assignment]

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: Any = None) -> mqtt.MQTTErrorCode:
        self.sent.append(bytes(packet))
        return mqtt.MQTT_ERR_SUCCESS


def paho_publish_properties(content_type: str | None, users: list[tuple[str, str]],
                            expiry: int | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if content_type is not None:
        props.ContentType = content_type
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    for pair in users:
        props.UserProperty = pair  # paho appends: User Property may repeat
    return props


def one(data: bytes) -> mqtt5.Packet:
    packets = Parser().feed(data)
    assert len(packets) == 1
    return packets[0]


def publish_from_broker(topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 7,
                        props: bytes = b"\x00", flags: int = 0) -> bytes:
    """A PUBLISH as a broker sends it, built by hand (tests.mqtt_packets' helpers)."""
    body = string(topic) + (struct.pack("!H", mid) if qos else b"") + props + payload
    return bytes([0x30 | (qos << 1) | flags]) + varint(len(body)) + body


# --- paho's bytes -------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "users", "expiry"), [
    (None, [], None),
    ("application/senml+json", [("seq", "42")], None),
    ("application/senml+cbor", [("seq", "1"), ("epoch", "3"), ("é", "ü")], 3600),
])
@pytest.mark.parametrize("qos", [0, 1])
def test_a_publish_is_byte_for_byte_what_paho_sends(content_type: str | None,
                                                      users: list[tuple[str, str]],
                                                      expiry: int | None, qos: int) -> None:
    paho = Recorder()
    props = paho_publish_properties(content_type, users, expiry)
    payload = b'[{"bn":"x/","n":"heart_rate","v":61}]'
    paho._send_publish(9 if qos else 0, TOPIC.encode(), payload, qos, False, False, None, props)
    ours = mqtt5.encode_publish(TOPIC, payload, qos=qos, packet_id=9 if qos else 0,
                                properties=mqtt5.encode_properties(
                                    message_expiry=expiry, content_type=content_type,
                                    user_properties=users))
    assert ours == paho.sent[0]
    # And paho's own Properties.pack() goes through encode_publish unchanged.
    assert mqtt5.encode_publish(TOPIC, payload, qos=qos, packet_id=9 if qos else 0,
                                properties=props.pack()) == paho.sent[0]


def test_connect_subscribe_and_disconnect_are_what_paho_sends() -> None:
    paho = Recorder()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 604_800
    props.ReceiveMaximum = 200
    paho._clean_start = False
    paho._connect_properties = props
    paho._send_connect(45)
    paho.subscribe("$share/ingest/devices/+/telemetry", qos=1)
    end = Properties(PacketTypes.DISCONNECT)
    end.SessionExpiryInterval = 0
    paho._send_disconnect(None, end)
    connect, subscribe, disconnect = paho.sent
    assert mqtt5.encode_connect("svc-bridge-1", keepalive=45, clean_start=False,
                                properties=mqtt5.encode_properties(
                                    session_expiry=604_800, receive_maximum=200)) == connect
    assert mqtt5.encode_subscribe(1, "$share/ingest/devices/+/telemetry", 1) == subscribe
    assert mqtt5.encode_disconnect(0, mqtt5.encode_properties(session_expiry=0)) == disconnect


def test_pubacks_of_a_batch_are_consecutive_success_pubacks() -> None:
    assert mqtt5.encode_pubacks([1, 2, 65535]) == b"".join(
        mqtt5.encode_puback(i) for i in (1, 2, 65535))
    assert mqtt5.encode_puback(0x0102) == b"\x40\x02\x01\x02"


# --- parsing --------------------------------------------------------------------------------


def test_a_publish_with_properties_is_read_back_exactly() -> None:
    props = mqtt5.encode_properties(payload_format=1, message_expiry=60,
                                    content_type="application/senml+json",
                                    user_properties=[("seq", "12"), ("epoch", "2")])
    message = one(mqtt5.encode_publish(TOPIC, b"\x00payload\xff", qos=1, packet_id=513,
                                       retain=True, dup=True, properties=props))
    assert isinstance(message, Message)
    assert (message.topic, message.payload, message.qos, message.mid, message.dup,
            message.retain) == (TOPIC, b"\x00payload\xff", 1, 513, True, True)
    assert message.properties.ContentType == "application/senml+json"
    assert message.properties.UserProperty == [("seq", "12"), ("epoch", "2")]


def test_absent_properties_are_absent_attributes_as_on_paho() -> None:
    message = one(mqtt5.encode_publish(TOPIC, b"{}", qos=0))
    assert isinstance(message, Message)
    assert getattr(message.properties, "ContentType", "default") == "default"
    assert getattr(message.properties, "UserProperty", None) is None
    assert (message.qos, message.mid) == (0, 0)


def test_skipped_properties_leave_the_payload_intact() -> None:
    props = (bytes([0x08]) + string(b"reply/to") + bytes([0x09]) + string(b"\x01\x02")
             + bytes([0x0B]) + varint(300) + bytes([0x0B, 0x05]) + bytes([0x01, 0x00]))
    message = one(publish_from_broker(TOPIC.encode(), b"body",
                                      props=varint(len(props)) + props))
    assert isinstance(message, Message) and message.payload == b"body"


def test_control_packets_from_the_broker() -> None:
    connack_props = bytes([0x21]) + struct.pack("!H", 20) + bytes([0x13]) + struct.pack("!H", 30)
    packets = Parser().feed(
        b"\x20" + varint(3 + len(connack_props)) + b"\x01\x00" + varint(len(connack_props))
        + connack_props
        + b"\x40\x02\x00\x05"  # PUBACK, short form
        + b"\x40\x03\x00\x06\x87"  # PUBACK, refused
        + b"\x90\x04\x00\x01\x00\x87"  # SUBACK, refused
        + b"\xd0\x00"  # PINGRESP
        + b"\xe0\x01\x8e")  # DISCONNECT, session taken over
    connack, ok, refused, suback, ping, disconnect = packets
    assert isinstance(connack, mqtt5.ConnAck) and connack.session_present
    assert connack.properties == {mqtt5.RECEIVE_MAXIMUM: 20, mqtt5.SERVER_KEEP_ALIVE: 30}
    assert isinstance(ok, mqtt5.PubAck) and (ok.packet_id, ok.reason_code) == (5, 0)
    assert isinstance(refused, mqtt5.PubAck) and refused.reason_code == 0x87
    assert isinstance(suback, mqtt5.SubAck) and suback.reason_codes == [0x87]
    assert isinstance(ping, mqtt5.PingResp)
    assert isinstance(disconnect, mqtt5.Disconnect) and disconnect.reason_code == 0x8E


def _stream() -> bytes:
    return b"".join([
        b"\x20\x03\x00\x00\x00",
        mqtt5.encode_publish(TOPIC, b"a" * 200, qos=1, packet_id=1,
                             properties=mqtt5.encode_properties(
                                 content_type="application/senml+json",
                                 user_properties=[("seq", "1")])),
        mqtt5.encode_publish(TOPIC, b"", qos=0),
        b"\x40\x02\x00\x05",
        mqtt5.encode_publish(TOPIC, bytes(range(256)) * 3, qos=1, packet_id=65535),
        b"\xd0\x00",
    ])


def _shape(packets: list[mqtt5.Packet]) -> list[tuple[Any, ...]]:
    shaped: list[tuple[Any, ...]] = []
    for p in packets:
        if isinstance(p, Message):
            shaped.append((p.topic, p.payload, p.qos, p.mid,
                           getattr(p.properties, "ContentType", None),
                           getattr(p.properties, "UserProperty", None)))
        else:
            shaped.append((type(p).__name__, getattr(p, "packet_id", None)))
    return shaped


def test_every_split_point_gives_the_same_packets() -> None:
    stream = _stream()
    whole = _shape(Parser().feed(stream))
    assert len(whole) == 6
    for cut in range(len(stream) + 1):
        parser = Parser()
        assert _shape(parser.feed(stream[:cut]) + parser.feed(stream[cut:])) == whole, cut


def test_a_byte_at_a_time_gives_the_same_packets() -> None:
    stream = _stream()
    parser = Parser()
    packets = [p for i in range(len(stream)) for p in parser.feed(stream[i:i + 1])]
    assert _shape(packets) == _shape(Parser().feed(stream))


def _publish_props(props: bytes) -> bytes:
    return publish_from_broker(TOPIC.encode(), b"x", props=varint(len(props)) + props)


@pytest.mark.parametrize(("data", "why"), [
    (b"\x30\xff\xff\xff\xff\x01", "remaining length longer than four bytes"),
    (b"\x30\x80\x00", "remaining length not in its shortest form"),
    (publish_from_broker(TOPIC.encode(), b"x", props=b"\x05\x03\x00"), "properties beyond"),
    (_publish_props(b"\x7e\x00"), "property 0x7e not allowed"),
    (_publish_props(b"\x23\x00\x01"), "topic alias"),
    (_publish_props(b"\x11\x00\x00\x00\x01"), "not allowed in PUBLISH"),
    (_publish_props(b"\x03\x00\x01a\x03\x00\x01b"), "more than once"),
    (_publish_props(b"\x03\x00\x02\xc3\x28"), "malformed"),  # invalid UTF-8
    (_publish_props(b"\x26\x00\x01k\x00\x05v"), "beyond"),
    (publish_from_broker(b"devices/\xff/telemetry", b"x"), "malformed"),
    (publish_from_broker(b"", b"x"), "invalid topic"),
    (publish_from_broker(b"devices/+/telemetry", b"x"), "invalid topic"),
    (publish_from_broker(TOPIC.encode(), b"x", qos=3), "QoS 3"),
    (publish_from_broker(TOPIC.encode(), b"x", qos=2), "QoS 2"),
    (publish_from_broker(TOPIC.encode(), b"x", mid=0), "packet identifier 0"),
    (publish_from_broker(TOPIC.encode(), b"x", qos=0, flags=0x08), "DUP"),
    (b"\x30\x01\x00", "malformed"),
    (b"\x50\x02\x00\x01", "not expected"),  # PUBREC
    (b"\x41\x02\x00\x01", "reserved flags"),
    (b"\xd0\x01\x00", "PINGRESP with a body"),
    (b"\x90\x03\x00\x01\x00", "without a reason code"),
    (b"\x20\x03\x02\x00\x00", "reserved CONNACK flags"),
    (b"\x20\x04\x00\x00\x01\x7f", "unknown property"),
])
def test_malformed_input_is_a_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        Parser().feed(data)


def test_a_packet_over_the_limit_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(ProtocolError, match="over the limit"):
        Parser(max_packet=1024).feed(b"\x30" + varint(5000))


# --- fuzzing --------------------------------------------------------------------------------


def _feed_all(chunks: list[bytes]) -> list[mqtt5.Packet]:
    """Packets, or ProtocolError: any other exception fails the test."""
    parser = Parser()
    packets: list[mqtt5.Packet] = []
    for chunk in chunks:
        packets += parser.feed(chunk)
    return packets


@PROPS
@given(st.lists(st.binary(max_size=64), max_size=8))
@example([b"\x30\x0a\x00\x03a/b\x00\x01\x01\x26"])
@example([b"\x20\x02\x00\x00", b"\xe0\x02\x00\x03"])
def test_arbitrary_bytes_give_packets_or_a_protocol_error(chunks: list[bytes]) -> None:
    try:
        _feed_all(chunks)
    except ProtocolError:
        pass


@st.composite
def mutated_publish(draw: st.DrawFn) -> bytes:
    props = mqtt5.encode_properties(
        content_type=draw(st.one_of(st.none(), st.text(CHARS, max_size=8))),
        user_properties=draw(st.lists(
            st.tuples(st.text(CHARS, max_size=4), st.text(CHARS, max_size=4)), max_size=3)))
    packet = bytearray(mqtt5.encode_publish(
        draw(st.text(TOPIC_CHARS, min_size=1, max_size=12)),
        draw(st.binary(max_size=32)), qos=1, packet_id=draw(st.integers(1, 65535)),
        properties=props))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(packet) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            packet[at] = draw(st.integers(0, 255))
        elif action == "insert":
            packet[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif len(packet) > 1:
            del packet[at]
    return bytes(packet)


@PROPS
@given(mutated_publish(), st.integers(0, 200))
def test_mutated_publishes_give_packets_or_a_protocol_error(data: bytes, cut: int) -> None:
    try:
        packets = _feed_all([data[:cut], data[cut:], _stream()])
    except ProtocolError:
        return
    for packet in packets:
        if isinstance(packet, Message):
            assert isinstance(packet.topic, str) and isinstance(packet.payload, bytes)


@PROPS
@given(st.text(TOPIC_CHARS, min_size=1, max_size=40),
       st.binary(max_size=300), st.integers(1, 65535), st.one_of(st.none(), st.text(CHARS)),
       st.lists(st.tuples(st.text(CHARS, max_size=10), st.text(CHARS, max_size=10)),
                max_size=4))
def test_any_publish_round_trips(topic: str, payload: bytes, mid: int,
                                 content_type: str | None,
                                 users: list[tuple[str, str]]) -> None:
    message = one(mqtt5.encode_publish(topic, payload, qos=1, packet_id=mid,
                                       properties=mqtt5.encode_properties(
                                           content_type=content_type,
                                           user_properties=users)))
    assert isinstance(message, Message)
    assert (message.topic, message.payload, message.mid) == (topic, payload, mid)
    assert getattr(message.properties, "ContentType", None) == content_type
    assert getattr(message.properties, "UserProperty", []) == users


def test_messages_beyond_the_room_given_wait_in_the_buffer() -> None:
    stream = _stream()  # CONNACK, PUBLISH, PUBLISH, PUBACK, PUBLISH, PINGRESP
    parser = Parser()
    first = parser.feed(stream, max_messages=0)
    assert _shape(first) == [("ConnAck", None)] and parser.buffered == len(stream) - 5
    second = parser.feed(b"", max_messages=2)
    assert [type(p).__name__ for p in second] == ["Message", "Message", "PubAck"]
    assert _shape(first + second + parser.feed(b"")) == _shape(Parser().feed(stream))
