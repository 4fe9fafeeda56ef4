"""The bridge: MQTT telemetry in, normalised and sealed samples out, acked after commit."""
