"""Home Assistant MQTT discovery: one device whose entities follow the ``state`` topic, never ``result``.

Home Assistant's recorder stores every state message; ``state`` changes only when an event
opens or closes, a part is judged, or the stats come round (``edge/device/state.py``), so it gets
a few messages a second at most, whatever the frame rate. Entities: a defect binary sensor (an
event is open), the count of events, frames/s; with an anomaly model an anomaly binary sensor;
with line I/O the last part's verdict, the yield and the rejected parts.

Configs are retained and re-announced whenever Home Assistant says ``online`` on
``<discovery prefix>/status`` (it forgets them when it restarts without a retained copy).
Entities that do not apply to the running model or mode are announced empty, which removes them
after a change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from linewatch.edge import __version__


def discovery_messages(prefix: str, device_id: str, topic: Callable[[str], str], anomaly: bool = False,
                       line: bool = False) -> list[tuple[str, bytes]]:
    """(config topic, JSON payload) for each entity, as published (retained); ``topic(name)`` gives the
    device's own topics."""
    # Home Assistant's node ids take letters, digits, _ and -: the device id as it is, so that a broker ACL can grant
    # homeassistant/+/linewatch_%u/+/config (docs/mosquitto/linewatch.acl); only a dot needs replacing.
    node = f"linewatch_{device_id}".replace(".", "_")
    device = {"identifiers": [node], "name": f"linewatch {device_id}", "manufacturer": "linewatch",
              "model": "linewatch edge", "sw_version": __version__}
    common = {"state_topic": topic("state"), "device": device, "availability_topic": topic("status"),
              "availability_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}"}

    def entity(kind: str, key: str, name: str, template: str, wanted: bool = True, **extra: Any) -> tuple[str, bytes]:
        config = {"name": name, "unique_id": f"{node}_{key}", "value_template": template, **common, **extra}
        return (f"{prefix}/{kind}/{node}/{key}/config",
                json.dumps(config, separators=(",", ":")).encode() if wanted else b"")

    return [
        entity("binary_sensor", "defect", "Defect", "{{ 'ON' if value_json.defect else 'OFF' }}",
               device_class="problem"),
        entity("sensor", "events", "Defect events", "{{ value_json.events }}", state_class="total_increasing",
               icon="mdi:alert-circle-outline"),
        entity("sensor", "fps", "Frames per second", "{{ value_json.fps }}", unit_of_measurement="frames/s",
               state_class="measurement", entity_category="diagnostic"),
        # the running model, from the retained status (it changes with an OTA update, not with linewatch's version)
        entity("sensor", "model", "Model", "{{ value_json.model }} {{ value_json.version }}",
               state_topic=topic("status"), json_attributes_topic=topic("status"),
               json_attributes_template="{{ {'sha256': value_json.sha256} | tojson }}", entity_category="diagnostic",
               icon="mdi:brain"),
        entity("binary_sensor", "anomaly", "Anomaly", "{{ 'ON' if value_json.anomaly else 'OFF' }}", anomaly,
               device_class="problem"),
        entity("sensor", "last_part", "Last part", "{{ value_json.last_verdict }}", line, icon="mdi:package-variant"),
        entity("sensor", "yield", "Yield", "{{ (value_json.yield * 100) | round(1) }}", line,
               unit_of_measurement="%", state_class="measurement"),
        entity("sensor", "rejected", "Rejected parts", "{{ value_json.rejected }}", line,
               state_class="total_increasing", icon="mdi:delete-sweep"),
    ]
