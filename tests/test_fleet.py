"""Ten devices on one broker: each is seen, nothing crosses between them, a deploy reaches only its target."""

from __future__ import annotations

import io
import threading
from pathlib import Path

from linewatch.edge.model import artifact
from linewatch.edge.tools.monitor import monitor
from tests.helpers import Collector, linewatch, start_daemon, stop_daemon


def test_ten_devices_one_broker(tiny: Path, broker, tmp_path: Path) -> None:
    devices = [f"fleet-{i:02d}" for i in range(10)]
    procs = []
    for i, device in enumerate(devices):
        model = tmp_path / device / "model.tflite"  # each device has its own model file, as on its own SD card
        model.parent.mkdir()
        model.write_bytes(tiny.read_bytes())
        procs.append(start_daemon(model, broker.url, device, model.parent, source=f"conveyor:{i}", fps=5))
    sub = Collector(broker.url, "linewatch/+/status")
    try:
        # Ten interpreters start one after another on two cores (slowly under emulation): watch once all are up.
        assert sub.wait_for(lambda s: {m.topic.split("/")[1] for m in s.messages
                                       if m.payload.get("state") == "online"} >= set(devices), timeout=300)
        out = io.StringIO()
        box: dict = {}
        crossed: list[tuple[str, str]] = []

        def check(device: str, result: dict) -> None:
            if result["device_id"] != device:
                crossed.append((device, result["device_id"]))

        watcher = threading.Thread(target=lambda: box.update(view=monitor(
            broker.url, as_json=True, count=10 * 15, timeout=90, out=out, on_result=check)))
        watcher.start()
        watcher.join(100)
        view = box["view"]
        fleet = {d: v for d, v in view.devices.items() if d in devices}
        assert set(fleet) == set(devices)  # every device is seen by the monitor
        assert all(v.results >= 5 and v.gaps == 0 and v.duplicates == 0 for v in fleet.values()), \
            {d: (v.results, v.gaps, v.duplicates) for d, v in fleet.items()}
        assert not crossed  # nothing crosses between devices

        v1 = artifact.load(tiny).card.version
        v2 = tmp_path / "v2.tflite"
        model = artifact.load(tiny)
        v2.write_bytes(artifact.pack(model.flatbuffer, model.card.model_copy(update={"version": "fleet-v2"}),
                                     model.labels))
        linewatch("deploy", str(v2), "--broker", broker.url, "--device", "fleet-03")
        assert sub.wait_for(lambda s: any(p.get("version") == "fleet-v2" for p in s.on("fleet-03/status")), 30)
        latest = {}
        for m in sub.messages:
            latest[m.topic.split("/")[1]] = m.payload.get("version")
        assert latest["fleet-03"] == "fleet-v2"
        assert all(latest[d] == v1 for d in devices if d != "fleet-03")  # a deploy reaches only its target
        assert artifact.load(tmp_path / "fleet-04" / "model.tflite").version == v1
        for proc in procs:
            stop_daemon(proc)
    finally:
        for proc in procs:
            proc.kill()
        sub.close()
