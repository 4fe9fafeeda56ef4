import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker_bridge.bridge import epoch_number, sequence_number


def _message(*user_properties):
    message = mqtt.MQTTMessage(mid=1, topic=b"devices/watch-0123456789ab/telemetry")
    props = Properties(PacketTypes.PUBLISH)
    for pair in user_properties:
        props.UserProperty = pair
    message.properties = props
    return message


def test_the_sequence_number_is_read_from_the_seq_user_property():
    assert sequence_number(_message(("fw", "1.2"), ("seq", "42"))) == 42


@pytest.mark.parametrize("text", ["", "-1", "1.5", "0x10", "²", "١٢", "1" * 19, " 7"])
def test_a_sequence_number_that_is_not_a_plain_decimal_is_none(text):
    assert sequence_number(_message(("seq", text))) is None


def test_a_message_without_properties_has_no_sequence_number():
    message = mqtt.MQTTMessage(mid=1, topic=b"devices/x/telemetry")
    assert sequence_number(message) is None


def test_the_epoch_is_read_from_the_epoch_user_property_and_is_zero_when_absent():
    assert epoch_number(_message(("seq", "3"), ("epoch", "2"))) == 2
    assert epoch_number(_message(("seq", "3"))) == 0
    assert epoch_number(mqtt.MQTTMessage(mid=1, topic=b"devices/x/telemetry")) == 0


@pytest.mark.parametrize("text", ["", "-1", "1.5", "²", "1" * 19])
def test_an_epoch_that_is_not_a_plain_decimal_is_none(text):
    assert epoch_number(_message(("seq", "1"), ("epoch", text))) is None
