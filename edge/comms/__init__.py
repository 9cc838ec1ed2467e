"""MQTT: the payload models that are the contract with subscribers, the broker connection, the device
publisher with its on-disk spool, and Home Assistant discovery. Knows nothing of frames or models."""
