"""Home Assistant MQTT discovery: one device with a last-label sensor, a defect binary sensor and frames/s,
and with an anomaly model an anomaly binary sensor and the anomaly score.

Configs are retained and re-announced whenever Home Assistant says ``online`` on
``<discovery prefix>/status`` (it forgets them when it restarts without a retained copy).
A classifier announces the anomaly entities empty, which removes them after a model change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def discovery_messages(prefix: str, device_id: str, topic: Callable[[str], str], model_name: str,
                       version: str, anomaly: bool = False) -> list[tuple[str, bytes]]:
    """(config topic, JSON payload) for each entity, as published (retained); ``topic(name)`` gives the
    device's own topics."""
    node = f"linewatch_{device_id}".replace("-", "_").replace(".", "_")
    device = {"identifiers": [node], "name": f"linewatch {device_id}", "manufacturer": "linewatch",
              "model": model_name, "sw_version": version}
    availability = {"availability_topic": topic("status"),
                    "availability_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}"}
    configs: list[tuple[str, dict[str, Any]]] = [
        (f"{prefix}/sensor/{node}/label/config",
         {"name": "Last label", "unique_id": f"{node}_label", "state_topic": topic("result"),
          "value_template": "{{ value_json.label }}", "icon": "mdi:eye", "device": device, **availability}),
        (f"{prefix}/binary_sensor/{node}/defect/config",
         {"name": "Defect", "unique_id": f"{node}_defect", "state_topic": topic("result"), "device_class": "problem",
          "value_template": "{{ 'ON' if value_json.defect else 'OFF' }}", "device": device, **availability}),
        (f"{prefix}/sensor/{node}/fps/config",
         {"name": "Frames per second", "unique_id": f"{node}_fps", "state_topic": topic("stats"),
          "value_template": "{{ value_json.fps }}", "unit_of_measurement": "frames/s", "state_class": "measurement",
          "device": device, **availability}),
    ]
    anomaly_configs: list[tuple[str, dict[str, Any]]] = [
        (f"{prefix}/binary_sensor/{node}/anomaly/config",
         {"name": "Anomaly", "unique_id": f"{node}_anomaly", "state_topic": topic("result"), "device_class": "problem",
          "value_template": "{{ 'ON' if value_json.anomalous else 'OFF' }}", "device": device, **availability}),
        (f"{prefix}/sensor/{node}/anomaly_score/config",
         {"name": "Anomaly score", "unique_id": f"{node}_anomaly_score", "state_topic": topic("result"),
          "value_template": "{{ value_json.anomaly_score }}", "state_class": "measurement",
          "icon": "mdi:chart-bell-curve", "device": device, **availability}),
    ]
    messages = [(config_topic, json.dumps(config, separators=(",", ":")).encode()) for config_topic, config in configs]
    return messages + [(config_topic, json.dumps(config, separators=(",", ":")).encode() if anomaly else b"")
                       for config_topic, config in anomaly_configs]
