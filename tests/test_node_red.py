"""docs/node-red/'s flow in real Node-RED (from npm): every part message reaches a PLC over Modbus TCP.

The PLC is pymodbus's own server, recording each write the flow's modbus-write node makes.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from linewatch.edge.comms.payloads import PartMessage
from linewatch.edge.demo.brokers import free_port
from linewatch.edge.device.plc.handshake import VERDICT_CODES
from tests.helpers import Collector, wait_until
from tests.node import node_modules

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "docs" / "node-red" / "linewatch-plc-flow.json"


class RecordingPlc:
    """A Modbus TCP server with 16 holding registers that keeps every write, on a thread of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.writes: list[tuple[int, list[int]]] = []
        self._ready = threading.Event()
        self.connected = threading.Event()  # a client (Node-RED's modbus-client) connected
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True).start()
        assert self._ready.wait(10)

    async def _record(self, function_code: int, start: int, address: int, count: int, registers: list[int],
                      values: Any) -> None:
        if values is not None:
            self.writes.append((address, [int(v) for v in values]))

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        device = SimDevice(1, simdata=SimData(0, count=16, values=0, datatype=DataType.REGISTERS),
                           action=self._record)
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port),
                                 trace_connect=lambda up: self.connected.set() if up else None)
        await server.serve_forever(background=True)
        self._ready.set()
        await self._stop.wait()
        await server.shutdown()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)


def test_the_flow_s_verdict_codes_are_the_handshake_s() -> None:
    function = next(node for node in json.loads(FLOW.read_text()) if node["type"] == "function")["func"]
    literal = re.search(r"const codes = (\{.*?\});", function)
    assert literal is not None
    codes = json.loads(re.sub(r"(\w+):", r'"\1":', literal.group(1)))
    assert codes == VERDICT_CODES


def test_node_red_writes_every_part_s_verdict_to_the_plc(broker, tmp_path: Path) -> None:
    modules = node_modules()
    plc = RecordingPlc()
    user_dir = tmp_path / "node-red"
    user_dir.mkdir()
    (user_dir / "flows.json").write_text(FLOW.read_text())
    port = free_port()
    (user_dir / "settings.js").write_text(
        f"module.exports = {{uiHost: '127.0.0.1', uiPort: {port}, flowFile: 'flows.json', credentialSecret: false,"
        " logging: {console: {level: 'info'}}, editorTheme: {tours: false}};\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LINEWATCH_MQTT_HOST": "127.0.0.1",
           "LINEWATCH_MQTT_PORT": str(broker.port), "PLC_HOST": "127.0.0.1", "PLC_PORT": str(plc.port)}
    log = (tmp_path / "node-red.log").open("w+")
    proc = subprocess.Popen(["node", str(modules / "node-red" / "red.js"), "--settings",
                             str(user_dir / "settings.js"), "--userDir", str(user_dir)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    sub = Collector(broker.url, "linewatch/#")
    parts = [PartMessage(device_id="nr-dev", seq=seq, trigger_ts="2026-12-05T10:00:00Z", trigger_ts_ms=1,
                         frame_ts_ms=1, frame_id=seq, label=label, score=0.9, verdict=verdict, rejected=rejected,
                         reason=verdict if rejected else None, decision_ms=12.0)
             for seq, label, verdict, rejected in ((70001, "ok", "good", False), (70002, "crack", "defect", True),
                                                   (70003, None, "late", True))]
    try:
        # both ends up: node-red-contrib-modbus drops what comes before its client has connected (docs/plc.md)
        assert wait_until(lambda: "Connected to broker" in Path(log.name).read_text(), 90), \
            Path(log.name).read_text()[-3000:]
        assert plc.connected.wait(30), Path(log.name).read_text()[-3000:]
        for part in parts[:2]:
            sub.client.publish("linewatch/nr-dev/part", part.encode(), qos=1)
        sub.client.publish("linewatch/nr-dev/part", b"{not json", qos=1)  # a bad message: an error logged, no write
        sub.client.publish("linewatch/nr-dev/part", parts[2].encode(), qos=1)
        assert wait_until(lambda: len(plc.writes) >= 3, 30), Path(log.name).read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(20)
        plc.close()
        sub.close()
    expected = [(0, [p.seq & 0xFFFF, VERDICT_CODES[p.verdict], int(p.rejected)]) for p in parts]
    assert plc.writes == expected
