"""``linewatch demo`` and the local MQTT brokers that it and the tests start (never used on a device)."""
