"""The PLC of ``linewatch demo --line --plc modbus``: the handshake as a PLC program does it, with pymodbus's client.

A PLC runs a cyclic scan: read its inputs, run its logic, write its outputs. This one's photo-eye
(the simulation's) sets a flag; each scan reads the device's discrete inputs, writes ``Trigger``
for a flagged part, and when it sees ``ResultsReady`` reads the result registers and writes
``ResultsAck``. What it saw is the demo's evidence: each part's result, how long from its
``Trigger`` write to the scan that saw ``ResultsReady``, and the overruns the device counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymodbus.client import ModbusTcpClient

from linewatch.edge.device.plc.handshake import BY_NAME, POINTS, VERDICT_CODES
from linewatch.edge.errors import BrokerError

SCAN_S = 0.001  # the PLC's scan cycle, beyond its requests' own time
VERDICTS = {code: verdict for verdict, code in VERDICT_CODES.items()}


def _registers(words: Sequence[int], name: str) -> int:
    """A point's value out of the input registers read from address 0 (32-bit: high word first)."""
    point = BY_NAME[name]
    value = words[point.address]
    return (value << 16 | words[point.address + 1]) if point.type == "uint32" else value


class ModbusPlc:
    """The scan loop on a thread of its own; ``part()`` is the photo-eye's edge at the PLC's input."""

    def __init__(self, port: int, host: str = "127.0.0.1", unit_id: int = 1) -> None:
        self.client = ModbusTcpClient(host, port=port, timeout=2)
        if not self.client.connect():
            raise BrokerError(f"the PLC could not connect to the device's Modbus server at {host}:{port}")
        self.unit_id = unit_id
        self.results: list[dict[str, Any]] = []
        self.trigger_times: list[float] = []  # monotonic, at each Trigger write
        self.latency_ms: list[float] = []
        self.registers = max(p.address + p.words for p in POINTS if p.table == "input_register")
        self.inputs = max(p.address + 1 for p in POINTS if p.table == "discrete_input")
        self._waiting: deque[float] = deque()  # photo-eye edges not yet written as Trigger
        self._sent: dict[int, float] = {}  # PartId -> when its Trigger was written
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, name="plc", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def part(self) -> None:
        self._waiting.append(time.monotonic())

    def _check(self, response: Any, what: str) -> Any:
        if response.isError():
            raise RuntimeError(f"{what}: {response}")
        return response

    def _scan(self) -> None:
        try:
            while not self._stop.is_set():
                bits = self._check(self.client.read_discrete_inputs(0, count=self.inputs, device_id=self.unit_id),
                                   "read inputs").bits
                if bits[BY_NAME["ResultsReady"].address]:
                    self._take_result(bool(bits[BY_NAME["Overrun"].address]))
                if self._waiting:
                    self._waiting.popleft()
                    started = time.monotonic()
                    self._check(self.client.write_coil(BY_NAME["Trigger"].address, True, device_id=self.unit_id),
                                "write Trigger")
                    self.trigger_times.append(started)
                    self._sent[len(self.trigger_times)] = started  # PartId counts the triggers from 1
                time.sleep(SCAN_S)
        except Exception as exc:  # the demo reports what broke the PLC's scan instead of hiding it
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _take_result(self, overrun: bool) -> None:
        seen = time.monotonic()
        words = self._check(self.client.read_input_registers(0, count=self.registers, device_id=self.unit_id),
                            "read results").registers
        part_id = _registers(words, "PartId")
        self.results.append({"part_id": part_id, "verdict": VERDICTS.get(_registers(words, "Verdict")),
                             "class_index": _registers(words, "ClassIndex"), "overrun": overrun})
        if part_id in self._sent:
            self.latency_ms.append(1000 * (seen - self._sent.pop(part_id)))
        self._check(self.client.write_coil(BY_NAME["ResultsAck"].address, True, device_id=self.unit_id),
                    "write ResultsAck")

    def stop(self) -> dict[str, Any]:
        """Stop scanning; what the PLC saw, and the device's own overrun count."""
        self._stop.set()
        self._thread.join(5)
        words = self.client.read_input_registers(0, count=self.registers, device_id=self.unit_id).registers
        self.client.close()
        latency = np.array(self.latency_ms) if self.latency_ms else None
        return {
            "protocol": "modbus", "triggers": len(self.trigger_times), "results": len(self.results),
            "overruns": _registers(words, "Overruns") if words else None, "errors": self.errors,
            "trigger_to_results_ready_ms": {"p50": round(float(np.percentile(latency, 50)), 2),
                                            "p99": round(float(np.percentile(latency, 99)), 2),
                                            "max": round(float(latency.max()), 2)} if latency is not None else None,
        }
