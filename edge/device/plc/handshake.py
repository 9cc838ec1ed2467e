"""A smart camera's handshake with the PLC, and the one map of the points it is made of.

The PLC writes ``Trigger`` for a part; the device takes it (clears ``Trigger``), drops
``TriggerReady`` while the part is open, and when the part's verdict is known sets ``OK``, ``NG``
or ``Error`` with the part's id, class and scores, then ``ResultsReady``. It holds them until the
PLC writes ``ResultsAck``; then it clears them and raises ``TriggerReady`` again. A trigger that
comes while ``TriggerReady`` is off (a part still open, a result not acknowledged) is an
overrun: the part is still inspected and its result queued behind the one shown, with
``Overrun`` set on it, and the ``Overruns`` counter goes up. Nothing is dropped.

The part itself goes the photo-eye's way (``LineController.trigger``): one verdict per part, the
reject gate's fail-safe ``late`` rule, one ``part`` message. ``Error`` is the verdicts the PLC
must treat as "not known good": ``late`` and ``no-frame``.

``POINTS`` is the map every protocol serves and ``linewatch plc-map`` prints: each point's name,
Modbus table and 0-based address (in declaration order), type, access and meaning.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from linewatch.edge.comms.payloads import PartVerdict
from linewatch.edge.device.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger(__name__)

Table = Literal["coil", "discrete_input", "holding_register", "input_register"]
PointType = Literal["bool", "uint16", "uint32"]
TABLES: tuple[Table, ...] = get_args(Table)
WORDS = {"bool": 1, "uint16": 1, "uint32": 2}  # registers (or bits) a point takes
NONE_U16 = 0xFFFF  # a uint16 point with no value (no class, no score): the part had no frame
VERDICT_CODES = {verdict: code for code, verdict in enumerate(get_args(PartVerdict), start=1)}  # 0: no result
OK_VERDICTS, ERROR_VERDICTS = ("good",), ("late", "no-frame")  # the rest (defect, anomaly) are NG
SCORE_SCALE, ANOMALY_SCALE = 10000, 1000
HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class Point:
    """One datum of the handshake, as a PLC programmer declares it on their side."""

    name: str
    table: Table
    type: PointType
    meaning: str
    address: int = 0  # 0-based within its table; set by ``_layout``

    @property
    def access(self) -> Literal["read", "read/write"]:
        return "read/write" if self.table in ("coil", "holding_register") else "read"

    @property
    def words(self) -> int:
        return WORDS[self.type]


def _layout(*points: Point) -> tuple[Point, ...]:
    """Give each point the next free address of its table, in the order declared."""
    next_free = dict.fromkeys(TABLES, 0)
    laid = []
    for point in points:
        laid.append(Point(point.name, point.table, point.type, point.meaning, next_free[point.table]))
        next_free[point.table] += point.words
    return tuple(laid)


_COUNTER_MEANING = "since the daemon started; wraps at 2^32"
POINTS = _layout(
    Point("Trigger", "coil", "bool", "PLC writes 1: inspect the part in front of the camera now. The device clears it "
          "when it has taken the trigger"),
    Point("ResultsAck", "coil", "bool", "PLC writes 1 once it has read the result. The device clears it, with "
          "ResultsReady and the result, and shows the next queued result if there is one"),
    Point("Ready", "discrete_input", "bool", "the device inspects: frames arriving, results stored (the ready output)"),
    Point("TriggerReady", "discrete_input", "bool", "a trigger now is taken without overrun: Ready, no part open, "
          "no result waiting for ResultsAck"),
    Point("ResultsReady", "discrete_input", "bool", "the result registers hold a part's result; held until ResultsAck"),
    Point("OK", "discrete_input", "bool", "the part is good"),
    Point("NG", "discrete_input", "bool", "the part is a defect or an anomaly: reject it"),
    Point("Error", "discrete_input", "bool", "the part has no verdict (late: none by the reject deadline; no-frame: "
          "no frame in its window): reject it, it is not known good"),
    Point("Overrun", "discrete_input", "bool", "this result's trigger came while TriggerReady was off"),
    Point("PartId", "input_register", "uint32", "the result's part: 1 for the first trigger since the daemon "
          "started, then one more per trigger; also the part message's external_id (plc-N)"),
    Point("ClassIndex", "input_register", "uint16", "the class the model gave the part's frame, as an index into the "
          "model's outcomes (linewatch inspect lists them); 65535: no frame"),
    Point("Score", "input_register", "uint16", f"the model's confidence in that class, x{SCORE_SCALE}; 65535: none"),
    Point("AnomalyScore", "input_register", "uint16", f"an anomaly model's score, x{ANOMALY_SCALE} "
          f"({ANOMALY_SCALE} = the threshold), capped at 65534; 65535: none"),
    Point("Verdict", "input_register", "uint16", "the verdict as a code: 0 none, "
          + ", ".join(f"{code} {verdict}" for verdict, code in VERDICT_CODES.items())),
    Point("DecisionMs", "input_register", "uint16", "from the trigger to the verdict, milliseconds (capped at 65534)"),
    Point("Parts", "input_register", "uint32", f"parts triggered, {_COUNTER_MEANING}"),
    Point("Good", "input_register", "uint32", f"parts passed as good, {_COUNTER_MEANING}"),
    Point("Rejected", "input_register", "uint32", f"parts rejected, {_COUNTER_MEANING}"),
    Point("RejectedDefect", "input_register", "uint32", f"rejected as defect, {_COUNTER_MEANING}"),
    Point("RejectedAnomaly", "input_register", "uint32", f"rejected as anomaly, {_COUNTER_MEANING}"),
    Point("RejectedLate", "input_register", "uint32", f"rejected as late, {_COUNTER_MEANING}"),
    Point("RejectedNoFrame", "input_register", "uint32", f"rejected as no-frame, {_COUNTER_MEANING}"),
    Point("Overruns", "input_register", "uint32", f"triggers that came while TriggerReady was off, {_COUNTER_MEANING}"),
    Point("Heartbeat", "input_register", "uint16", "one more every second while the line's own thread runs; wraps at "
          "65536. A PLC that sees it stand still for 3 s treats the device as down"),
    Point("ModelId", "input_register", "uint32", "the model in use: the first 8 hex digits of its sha256 (as in the "
          "status message), to check which model judged the parts"),
)
BY_NAME = {point.name: point for point in POINTS}
RESULT_POINTS = ("OK", "NG", "Error", "Overrun", "PartId", "ClassIndex", "Score", "AnomalyScore", "Verdict",
                 "DecisionMs")


OPCUA_NAMESPACE = "urn:linewatch:machine-vision"
OPCUA_STATE = ("Ready", "TriggerReady")  # under the vision system's state machine; RESULT_POINTS and ResultsReady
# under its result management; the rest (counters, heartbeat, model) under its statistics


def opcua_path(point: Point) -> str:
    """Where OPC UA serves a point, under the vision system: the PLC's writes are its methods."""
    if point.access == "read/write":
        return f"VisionSystem/{point.name}()"
    if point.name in OPCUA_STATE:
        return f"VisionSystem/VisionStateMachine/{point.name}"
    if point.name in RESULT_POINTS or point.name == "ResultsReady":
        return f"VisionSystem/ResultManagement/{point.name}"
    return f"VisionSystem/Statistics/{point.name}"


def plc_map() -> list[dict[str, Any]]:
    """Every point, as ``linewatch plc-map --json`` prints it and docs/plc.md tabulates it: its Modbus table and
    address, and its OPC UA node (``nsu=`` form: the namespace's index is the server's to give)."""
    return [{"name": p.name, "table": p.table, "address": p.address, "type": p.type, "words": p.words,
             "access": p.access, "opcua_node": f"nsu={OPCUA_NAMESPACE};s={p.name}", "opcua_path": opcua_path(p),
             "meaning": p.meaning} for p in POINTS]


def map_text() -> str:
    """The map as ``linewatch plc-map`` prints it: a row a point, Modbus addresses 0-based."""
    rows = [("name", "modbus table", "address", "type", "access", "opc ua (under Objects)", "meaning")]
    for row in plc_map():
        rows.append((row["name"], row["table"], address_text(row), row["type"], row["access"], row["opcua_path"],
                     row["meaning"]))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[6]
                     for row in rows)


def address_text(row: dict[str, Any]) -> str:
    """A point's Modbus address, or its range for a 32-bit value."""
    return f"{row['address']}" if row["words"] == 1 else f"{row['address']}-{row['address'] + row['words'] - 1}"


def _u16(value: float | None, scale: int) -> int:
    return NONE_U16 if value is None else max(0, min(NONE_U16 - 1, round(value * scale)))


class Handshake:
    """The handshake's state, shared by every protocol that serves it; thread-safe.

    ``trigger(external_id)`` hands a part to the line (the photo-eye's path); the line tells
    ``verdict()`` what it decided; ``beat(ready)`` comes from the line's own thread.
    """

    def __init__(self, trigger: Callable[[str], object], counters: Callable[[], dict[str, Any]],
                 model_sha256: Callable[[], str], clock: Clock = SYSTEM_CLOCK) -> None:
        self._trigger_line = trigger
        self._counters = counters
        self._model_sha256 = model_sha256
        self.clock = clock
        self._lock = threading.Lock()
        self._shown: dict[str, int] | None = None  # the result the PLC reads: point name -> value
        self._queue: deque[dict[str, int]] = deque()
        self._open: dict[str, tuple[int, bool]] = {}  # external_id -> (PartId, overrun)
        self._next_id = 0
        self._ready = False
        self.overruns = 0
        self._heartbeat = 0
        self._last_beat = -float("inf")
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` after every change a PLC could see (a server that pushes values, such as OPC UA's)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # --- the PLC's writes -------------------------------------------------------------------------

    def write(self, name: str, value: int) -> None:
        """The PLC wrote ``value`` to the writable point ``name`` (1 is the edge that acts; 0 does nothing)."""
        if BY_NAME[name].access != "read/write":
            raise ValueError(f"{name} is read-only")
        if not value:
            return
        if name == "Trigger":
            self.trigger_part()
        elif name == "ResultsAck":
            self._ack()

    def trigger_part(self) -> int:
        """A part to inspect now (the PLC's ``Trigger``); its ``PartId``."""
        with self._lock:
            overrun = not self._trigger_ready()
            self._next_id += 1
            part_id = self._next_id
            external_id = f"plc-{part_id}"
            self._open[external_id] = (part_id, overrun)
            if overrun:
                self.overruns += 1
                if self.overruns == 1 or self.overruns % 100 == 0:
                    logger.warning("plc: trigger %d came before TriggerReady (%d overrun(s) so far): its result is "
                                   "queued with Overrun set; the PLC should wait for TriggerReady", part_id,
                                   self.overruns)
        # outside the lock: the line decides under its own lock and tells verdict(), which takes this one
        self._trigger_line(external_id)
        self._changed()
        return part_id

    def _ack(self) -> None:
        with self._lock:
            self._shown = self._queue.popleft() if self._queue else None
        self._changed()

    # --- the line's side --------------------------------------------------------------------------

    def verdict(self, external_id: str | None, verdict: PartVerdict, class_index: int | None, score: float | None,
                anomaly_score: float | None, decision_s: float | None) -> None:
        """The line decided a part (or found it late at the gate); a part not the PLC's is ignored."""
        with self._lock:
            if external_id not in self._open:
                return
            part_id, overrun = self._open.pop(external_id)
            result = {
                "OK": verdict in OK_VERDICTS, "NG": verdict not in OK_VERDICTS + ERROR_VERDICTS,
                "Error": verdict in ERROR_VERDICTS, "Overrun": overrun, "PartId": part_id,
                "ClassIndex": NONE_U16 if class_index is None else class_index,
                "Score": _u16(score, SCORE_SCALE), "AnomalyScore": _u16(anomaly_score, ANOMALY_SCALE),
                "Verdict": VERDICT_CODES[verdict], "DecisionMs": _u16(decision_s, 1000)}
            if self._shown is None:
                self._shown = result
            else:
                self._queue.append(result)
        self._changed()

    def beat(self, ready: bool) -> None:
        """The line thread's periodic check: whether the device inspects, and the heartbeat."""
        now = self.clock.monotonic()
        with self._lock:
            changed = ready != self._ready or now - self._last_beat >= HEARTBEAT_S
            self._ready = ready
            if now - self._last_beat >= HEARTBEAT_S:
                self._heartbeat = (self._heartbeat + 1) & 0xFFFF
                self._last_beat = now
        if changed:
            self._changed()

    # --- what the PLC reads -----------------------------------------------------------------------

    def _trigger_ready(self) -> bool:
        return self._ready and not self._open and self._shown is None

    def values(self) -> dict[str, int]:
        """Every point's value now (bits as 0/1), one consistent snapshot."""
        counters = self._counters()
        rejected = counters.get("rejected_by_reason", {})
        with self._lock:
            shown = self._shown or {}
            values = {
                "Trigger": 0, "ResultsAck": 0, "Ready": self._ready, "TriggerReady": self._trigger_ready(),
                "ResultsReady": self._shown is not None,
                **{name: shown.get(name, 0) for name in RESULT_POINTS},
                "Parts": counters.get("parts", 0), "Good": counters.get("good", 0),
                "Rejected": counters.get("rejected", 0), "RejectedDefect": rejected.get("defect", 0),
                "RejectedAnomaly": rejected.get("anomaly", 0), "RejectedLate": rejected.get("late", 0),
                "RejectedNoFrame": rejected.get("no-frame", 0), "Overruns": self.overruns,
                "Heartbeat": self._heartbeat, "ModelId": int(self._model_sha256()[:8] or "0", 16)}
        return {name: int(value) for name, value in values.items()}

    def table(self, table: Table) -> list[int]:
        """One Modbus table's words (or bits) from address 0, 32-bit points high word first."""
        values = self.values()
        words: list[int] = []
        for point in POINTS:
            if point.table != table:
                continue
            value = values[point.name] & (0xFFFFFFFF if point.type == "uint32" else 0xFFFF)
            words += [value >> 16, value & 0xFFFF] if point.type == "uint32" else [value]
        return words
