"""The PLC of ``linewatch demo --line --plc modbus|opcua``: the handshake as a PLC program does it, with the
protocol's own client library (pymodbus, asyncua).

A PLC runs a cyclic scan: read its inputs, run its logic, write its outputs. This one's photo-eye
(the simulation's) sets a flag; each scan reads the device's state, triggers a flagged part, and
when it sees ``ResultsReady`` reads the result and acknowledges it. What it saw is the demo's
evidence: each part's result, how long from its trigger to the scan that saw ``ResultsReady``,
and the overruns the device counted. ``Plc`` is the scan; a protocol overrides its five requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from linewatch.edge.device.plc.handshake import BY_NAME, POINTS, VERDICT_CODES
from linewatch.edge.errors import BrokerError

SCAN_S = 0.001  # the PLC's scan cycle, beyond its requests' own time
# A request's timeout: an encrypted OPC UA session opens in milliseconds here, in seconds under emulated arm64
REQUEST_TIMEOUT_S = 30.0
VERDICTS = {code: verdict for verdict, code in VERDICT_CODES.items()}
T = TypeVar("T")


class Plc:
    """The scan loop on a thread of its own; ``part()`` is the photo-eye's edge at the PLC's input."""

    protocol = ""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.trigger_times: list[float] = []  # monotonic, at each trigger
        self.latency_ms: list[float] = []
        self.errors: list[str] = []
        self._waiting: deque[float] = deque()  # photo-eye edges not yet triggered
        self._sent: dict[int, float] = {}  # PartId -> when it was triggered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, name="plc", daemon=True)

    # --- what a protocol provides -----------------------------------------------------------------

    def results_ready(self) -> tuple[bool, bool]:
        """(ResultsReady, Overrun), read this scan."""
        raise NotImplementedError

    def trigger(self) -> None:
        raise NotImplementedError

    def read(self, names: Sequence[str]) -> dict[str, int]:
        """The named points' values."""
        raise NotImplementedError

    def ack(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # --- the scan ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def part(self) -> None:
        self._waiting.append(time.monotonic())

    def _scan(self) -> None:
        try:
            while not self._stop.is_set():
                ready, overrun = self.results_ready()
                if ready:
                    self._take_result(overrun)
                if self._waiting:
                    self._waiting.popleft()
                    started = time.monotonic()
                    self.trigger()
                    self.trigger_times.append(started)
                    self._sent[len(self.trigger_times)] = started  # PartId counts the triggers from 1
                time.sleep(SCAN_S)
        except Exception as exc:  # the demo reports what broke the PLC's scan instead of hiding it
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _take_result(self, overrun: bool) -> None:
        seen = time.monotonic()
        result = self.read(("PartId", "Verdict", "ClassIndex"))
        self.results.append({"part_id": result["PartId"], "verdict": VERDICTS.get(result["Verdict"]),
                             "class_index": result["ClassIndex"], "overrun": overrun})
        if result["PartId"] in self._sent:
            self.latency_ms.append(1000 * (seen - self._sent.pop(result["PartId"])))
        self.ack()

    def stop(self) -> dict[str, Any]:
        """Stop scanning; what the PLC saw, and the device's own overrun count."""
        self._stop.set()
        self._thread.join(5)
        overruns = self.read(("Overruns",))["Overruns"]
        self.close()
        latency = np.array(self.latency_ms) if self.latency_ms else None
        return {
            "protocol": self.protocol, "triggers": len(self.trigger_times), "results": len(self.results),
            "overruns": overruns, "results_flagged_overrun": sum(r["overrun"] for r in self.results),
            "errors": self.errors,
            "trigger_to_results_ready_ms": {"p50": round(float(np.percentile(latency, 50)), 2),
                                            "p99": round(float(np.percentile(latency, 99)), 2),
                                            "max": round(float(latency.max()), 2)} if latency is not None else None,
        }


class ModbusPlc(Plc):
    """Coils, discrete inputs and input registers, with pymodbus's client."""

    protocol = "modbus"

    def __init__(self, port: int, host: str = "127.0.0.1", unit_id: int = 1) -> None:
        from pymodbus.client import ModbusTcpClient

        super().__init__()
        self.client = ModbusTcpClient(host, port=port, timeout=REQUEST_TIMEOUT_S)
        if not self.client.connect():
            raise BrokerError(f"the PLC could not connect to the device's Modbus server at {host}:{port}")
        self.unit_id = unit_id
        self.registers = max(p.address + p.words for p in POINTS if p.table == "input_register")
        self.inputs = max(p.address + 1 for p in POINTS if p.table == "discrete_input")

    def _check(self, response: Any, what: str) -> Any:
        if response.isError():
            raise RuntimeError(f"{what}: {response}")
        return response

    def results_ready(self) -> tuple[bool, bool]:
        bits = self._check(self.client.read_discrete_inputs(0, count=self.inputs, device_id=self.unit_id),
                           "read inputs").bits
        return bool(bits[BY_NAME["ResultsReady"].address]), bool(bits[BY_NAME["Overrun"].address])

    def trigger(self) -> None:
        self._check(self.client.write_coil(BY_NAME["Trigger"].address, True, device_id=self.unit_id), "Trigger")

    def read(self, names: Sequence[str]) -> dict[str, int]:
        words = self._check(self.client.read_input_registers(0, count=self.registers, device_id=self.unit_id),
                            "read results").registers
        return {name: registers(words, name) for name in names}

    def ack(self) -> None:
        self._check(self.client.write_coil(BY_NAME["ResultsAck"].address, True, device_id=self.unit_id),
                    "ResultsAck")

    def close(self) -> None:
        self.client.close()


class OpcUaPlc(Plc):
    """Variables and the vision system's methods over Basic256Sha256 Sign&Encrypt, with asyncua's client; its own
    event loop, driven from the scan thread."""

    protocol = "opcua"

    def __init__(self, url: str, username: str, password: str, certificates: Path) -> None:
        from asyncua.client.client import Client
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        from linewatch.edge.device.plc.opcua import NAMESPACE

        super().__init__()
        self.loop = asyncio.new_event_loop()
        certificates.mkdir(parents=True, exist_ok=True)
        key, cert = certificates / "plc-key.pem", certificates / "plc-cert.der"
        self._run(setup_self_signed_certificate(key, cert, "urn:linewatch:demo-plc", "localhost",
                                                [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "demo PLC"}))
        self.client = Client(url, timeout=REQUEST_TIMEOUT_S)
        self.client.application_uri = "urn:linewatch:demo-plc"
        self.client.set_user(username)
        self.client.set_password(password)
        self._run(self.client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}"))
        try:
            self._run(self.client.connect())
        except (TimeoutError, OSError) as exc:
            raise BrokerError(f"the PLC could not connect to the device's OPC UA server at {url}: {exc}") from None
        ns = self._run(self.client.get_namespace_index(NAMESPACE))
        self.system = self.client.get_node(f"ns={ns};s=VisionSystem")
        self.ns = ns
        self.nodes = {p.name: self.client.get_node(f"ns={ns};s={p.name}") for p in POINTS if p.access == "read"}

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def results_ready(self) -> tuple[bool, bool]:
        ready, overrun = self._run(self.client.read_values([self.nodes["ResultsReady"], self.nodes["Overrun"]]))
        return bool(ready), bool(overrun)

    def trigger(self) -> None:
        self._run(self.system.call_method(f"{self.ns}:Trigger"))

    def read(self, names: Sequence[str]) -> dict[str, int]:
        values = self._run(self.client.read_values([self.nodes[name] for name in names]))
        return {name: int(value) for name, value in zip(names, values)}

    def ack(self) -> None:
        self._run(self.system.call_method(f"{self.ns}:ResultsAck"))

    def close(self) -> None:
        self._run(self.client.disconnect())
        self.loop.close()


def registers(words: Sequence[int], name: str) -> int:
    """A point's value out of the input registers read from address 0 (32-bit: high word first)."""
    point = BY_NAME[name]
    value = words[point.address]
    return (value << 16 | words[point.address + 1]) if point.type == "uint32" else value
