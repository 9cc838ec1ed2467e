"""On the line: a part-present trigger, one verdict per part, and a reject output that fails safe.

What every machine-vision controller on a line does, here for the Pi's GPIO through gpiozero:

1. a trigger (a photo-eye's edge on a GPIO pin, or ``cmd/trigger`` over MQTT) says a part is in
   front of the camera at time t; an edge closer than ``debounce_ms`` to the last is contact
   bounce, one closer than ``min_spacing_ms`` is a counted double trigger, not a new part;
2. the part's verdict comes from the frame captured nearest t + ``capture_offset_ms`` (or the
   worst frame within ``window_ms`` of it), judged as the result sink judges frames: ``good``,
   ``defect``, ``anomaly``; no frame in the window gives ``no-frame``;
3. at t + ``reject_delay_ms`` (the part reaches the gate) a scheduler thread on the monotonic
   clock, independent of inference, pulses the reject output for ``reject_pulse_ms`` unless the
   verdict is ``good``. **Fail-safe**: a part with no verdict by then is rejected as ``late``;
   parts in transit when the daemon stops are rejected at their deadlines before it exits;
4. each part gets one ``part`` message through the spool (its ``seq`` is the part number,
   monotonic across restarts) with its verdict, whether it was rejected and why.

The ``ready`` output is held only while the daemon inspects (frames arriving in the last
second, the spool writable) and dropped within ``READY_CHECK_S`` of a fault and at stop; the
PLC watches it. docs/line-io.md has the wiring and the timing.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linewatch.edge.comms.payloads import PartMessage, PartVerdict, rfc3339
from linewatch.edge.device.clock import SYSTEM_CLOCK, Clock
from linewatch.edge.device.config import LineSection
from linewatch.edge.device.pipeline import Result
from linewatch.edge.errors import UsageError
from linewatch.edge.model.engine import Engine

logger = logging.getLogger(__name__)

LATENCY_MARGIN_MS = 50  # a reject delay must leave this beyond the decision latency measured at start
READY_CHECK_S = 0.2  # how often the ready output is checked: it drops within this plus a second of no frames
HISTORY_S = 5.0  # results kept to match a trigger that comes after its frame was classified
# Deciding a part before its window closes (pick "nearest") needs the shortest interval between frames: the last
# INTERVALS_KEPT intervals, at least MIN_INTERVALS of them, the shortest taken at INTERVAL_MARGIN for jitter.
INTERVALS_KEPT, MIN_INTERVALS, INTERVAL_MARGIN = 100, 10, 0.8
VERDICTS = ("good", "defect", "anomaly", "late", "no-frame")


def decision_latency_ms(engine: Engine, fps: float | None) -> float:
    """What deciding a part takes here, measured at start: a frame period, and preparing and invoking a frame
    (median of 5, three times over for blocks, waits and the publish thread)."""
    frame = np.zeros((engine.height, engine.width, 3), np.uint8)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        engine.predict(frame)
        times.append(1000 * (time.perf_counter() - started))
    return (1000 / fps if fps else 0.0) + 3 * float(np.median(times[1:]))


@dataclass
class Part:
    """One part between the camera and the reject gate."""

    trigger_mono: float
    trigger_wall: float
    external_id: str | None = None
    verdict: PartVerdict | None = None  # good, defect, anomaly, no-frame; None until decided
    result: Result | None = None
    decided_mono: float | None = None
    candidates: list[Result] = field(default_factory=list)


@dataclass
class LineCounters:
    parts: int = 0
    good: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS[1:], 0))
    double_triggers: int = 0
    bounces: int = 0
    late: int = 0

    def as_dict(self) -> dict[str, Any]:
        rejected = sum(self.rejected.values())
        return {"parts": self.parts, "good": self.good, "rejected": rejected, "rejected_by_reason": self.rejected,
                "double_triggers": self.double_triggers, "late": self.late,
                "yield": round(self.good / self.parts, 4) if self.parts else None}


def used_pins(cfg: LineSection) -> list[int]:
    """The GPIO pins the line drives or reads (the trigger's in mode gpio only)."""
    return [pin for pin in (cfg.trigger_pin if cfg.mode == "gpio" else None, cfg.reject_pin, cfg.good_pin,
                            cfg.ready_pin) if pin is not None]


class Outputs:
    """The GPIO side: trigger input, reject, good and ready outputs, through gpiozero.

    ``pin_factory`` "mock" uses gpiozero's MockFactory (the demo and the tests: the same code
    paths as on a Pi); "default" lets gpiozero pick (lgpio on Raspberry Pi OS).
    """

    def __init__(self, cfg: LineSection, on_edge: Callable[[], object]) -> None:
        from gpiozero import Device, DigitalInputDevice, DigitalOutputDevice

        if cfg.pin_factory == "mock":
            from gpiozero.pins.mock import MockFactory

            self.factory: Any = MockFactory()
        else:
            self.factory = Device.pin_factory  # None until gpiozero picks one for the first device
        pins = used_pins(cfg)
        if len(set(pins)) != len(pins):
            raise UsageError(f"line: a GPIO pin is used twice ({', '.join(map(str, pins))}): give each its own")
        kwargs = {"pin_factory": self.factory}
        try:
            self.trigger = None
            if cfg.mode == "gpio":
                pull_up = cfg.trigger_pull == "up"
                self.trigger = DigitalInputDevice(cfg.trigger_pin, pull_up=pull_up, **kwargs)
                # gpiozero calls a pulled-up input active when it reads low: an electrical rising edge then
                # deactivates it.
                if (cfg.trigger_edge == "rising") != pull_up:
                    self.trigger.when_activated = on_edge
                else:
                    self.trigger.when_deactivated = on_edge
            self.reject = DigitalOutputDevice(cfg.reject_pin, active_high=cfg.active_high, **kwargs) \
                if cfg.reject_pin is not None else None
            self.good = DigitalOutputDevice(cfg.good_pin, active_high=cfg.active_high, **kwargs) \
                if cfg.good_pin is not None else None
            self.ready = DigitalOutputDevice(cfg.ready_pin, active_high=cfg.active_high, **kwargs) \
                if cfg.ready_pin is not None else None
        except Exception as exc:  # gpiozero's own errors: no GPIO here, a pin it does not know, a pin in use
            raise UsageError(f"line: cannot set up the GPIO pins ({type(exc).__name__}: {exc}): check line.*_pin "
                             "and that this user may use the GPIO (group gpio)") from None
        self.factory = next(d for d in (self.trigger, self.reject, self.good, self.ready) if d is not None).pin_factory

    def close(self) -> None:
        for device in (self.trigger, self.reject, self.good, self.ready):
            if device is not None:
                device.close()


class LineController:
    """Triggers in, verdicts matched from results, reject pulses out on time, one ``part`` message each.

    Every time it reads comes from ``clock``; its scheduler thread only waits and calls ``tick()``,
    so a test on a fake clock leaves the thread unstarted and calls ``tick()`` itself.
    """

    def __init__(self, cfg: LineSection, *, publish: Callable[[str, Callable[[int], bytes]], int], device_id: str,
                 spool_writable: Callable[[], bool], on_part: Callable[..., None] | None = None,
                 on_decision: Callable[[float], None] | None = None,
                 on_verdict: Callable[[Part, PartVerdict], None] | None = None,
                 on_check: Callable[[bool], None] | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        """``publish(kind, build)`` spools a message built from its ``seq``; ``on_part(**facts)`` hears each part's
        verdict and the counts (the ``state`` topic), ``on_decision`` its decision latency in seconds (the metrics'
        histogram), ``on_verdict`` each part as soon as its verdict is known (at the gate for a late one: the PLC's
        handshake), ``on_check`` whether the device inspects, at every check of the ready output."""
        self.cfg = cfg
        self.clock = clock
        self.publish = publish
        self.device_id = device_id
        self.spool_writable = spool_writable
        self.on_part = on_part
        self.on_decision = on_decision
        self.on_verdict = on_verdict
        self.on_check = on_check
        self.counters = LineCounters()
        self._lock = threading.RLock()  # re-entrant: a trigger schedules its gate while it holds the lock
        self._wake = threading.Condition(self._lock)
        self._last_frame = -float("inf")  # monotonic time of the newest result: ready needs frames arriving
        self._in_transit: deque[Part] = deque()  # trigger order = deadline order: the delay is one for all
        self._undecided: list[Part] = []
        self._history: deque[Result] = deque()
        self._intervals: deque[float] = deque(maxlen=INTERVALS_KEPT)  # between consecutive frames' capture times
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._last_edge = -float("inf")
        self._last_part = -float("inf")
        self._stopping = False
        self._ready = False
        self._next_ready = -float("inf")  # when tick() next refreshes the ready output
        self.outputs = Outputs(cfg, lambda: self.trigger()) if used_pins(cfg) else None
        self._thread = threading.Thread(target=self._run, name="line", daemon=True)

    # --- inputs -----------------------------------------------------------------------------------

    def trigger(self, external_id: str | None = None, debounce: bool = True) -> dict[str, Any]:
        """A part is in front of the camera now (the photo-eye's edge, ``cmd/trigger``, or the PLC's handshake, whose
        every trigger is a part: ``debounce`` False skips the bounce and double-trigger rules of a contact)."""
        now, wall = self.clock.monotonic(), self.clock.time()
        with self._lock:
            if debounce:
                bounce = now - self._last_edge < self.cfg.debounce_ms / 1000
                self._last_edge = now
                if bounce:
                    self.counters.bounces += 1
                    return {"counted": False, "why": "bounce"}
                if now - self._last_part < self.cfg.min_spacing_ms / 1000:
                    self.counters.double_triggers += 1
                    return {"counted": False, "why": "double trigger"}
            self._last_part = now
            part = Part(now, wall, external_id)
            self._in_transit.append(part)
            self._undecided.append(part)
            self.counters.parts += 1
            for result in self._history:
                self._consider(part, result)
            if self._history:  # the frames already classified may cover its whole window
                self._settle(self._history[-1].frame.ts)
            self._at(now + self.cfg.reject_delay_ms / 1000, functools.partial(self._gate, part))
            return {"counted": True, "in_transit": len(self._in_transit)}

    def on_result(self, result: Result) -> None:
        """Every classified frame, from the publish thread: a candidate for the parts around its capture time."""
        with self._lock:
            self._last_frame = self.clock.monotonic()
            if self._history and result.frame.ts > self._history[-1].frame.ts:
                self._intervals.append(result.frame.ts - self._history[-1].frame.ts)
            self._history.append(result)
            while self._history and self._history[0].frame.ts < result.frame.ts - HISTORY_S:
                self._history.popleft()
            for part in self._undecided:
                self._consider(part, result)
            self._settle(result.frame.ts)

    # --- matching ---------------------------------------------------------------------------------

    def _target(self, part: Part) -> float:
        return part.trigger_wall + self.cfg.capture_offset_ms / 1000

    def _consider(self, part: Part, result: Result) -> None:
        if abs(result.frame.ts - self._target(part)) <= self.cfg.window_ms / 2000:
            part.candidates.append(result)

    def _settle(self, newest_ts: float) -> None:
        """Decide the parts whose window has closed, or (``pick = "nearest"``) whose nearest frame is known: no frame
        still to come can be nearer their target."""
        still = []
        for part in self._undecided:
            if newest_ts > self._target(part) + self.cfg.window_ms / 2000 or self._nearest_known(part):
                self._decide(part)
            else:
                still.append(part)
        self._undecided = still

    def _nearest_known(self, part: Part) -> bool:
        """With frames at least ``p`` apart, no later frame is nearer the target than one at or after
        ``target - p / 2``: the part need not wait for its window to close. ``p`` is a margin under the shortest
        interval seen between recent frames (none seen yet: wait)."""
        if self.cfg.pick != "nearest" or not part.candidates or len(self._intervals) < MIN_INTERVALS:
            return False
        earliest = self._target(part) - INTERVAL_MARGIN * min(self._intervals) / 2
        return any(candidate.frame.ts >= earliest for candidate in part.candidates)

    def _judge(self, result: Result) -> PartVerdict:
        """The part's verdict by the rule of the model that classified its frame."""
        return result.model.verdict(result.prediction.label, result.prediction.anomalous)

    def _badness(self, result: Result) -> tuple[int, float]:
        """For ``pick = "worst"``: a defect over an anomaly over a good frame, then the surest of its kind."""
        verdict = self._judge(result)
        score = result.prediction.score
        return {"good": 0, "anomaly": 1, "defect": 2}[verdict], -score if verdict == "good" else score

    def _decide(self, part: Part) -> None:
        part.decided_mono = self.clock.monotonic()
        if not part.candidates:
            part.verdict = "no-frame"
        else:
            if self.cfg.pick == "worst":
                part.result = max(part.candidates, key=self._badness)
            else:
                target = self._target(part)
                part.result = min(part.candidates, key=lambda r: abs(r.frame.ts - target))
            part.verdict = self._judge(part.result)
            part.candidates = []
        if self.on_verdict is not None:
            self.on_verdict(part, part.verdict)

    # --- the gate ---------------------------------------------------------------------------------

    def _gate(self, part: Part) -> None:
        """The part reaches the reject gate now: pulse unless it is known good (fail-safe: unknown is rejected)."""
        with self._lock:
            if part.verdict is None:  # the pipeline has not classified its window yet: behind, stalled, or blind
                self._undecided.remove(part)
                self.counters.late += 1
            verdict = part.verdict or "late"
            rejected = verdict != "good" and (self.cfg.fail_safe or verdict != "late")
            self._in_transit.remove(part)
            if part.verdict is None and self.on_verdict is not None:
                self.on_verdict(part, verdict)
        outputs = self.outputs
        if rejected:
            self.counters.rejected[verdict] += 1
            if outputs is not None and outputs.reject is not None:
                self._pulse(outputs.reject)
        else:
            self.counters.good += verdict == "good"
            if outputs is not None and outputs.good is not None:
                self._pulse(outputs.good)
        self.publish("part", lambda seq: self._message(part, verdict, rejected, seq))
        if self.on_decision is not None and part.decided_mono is not None:
            self.on_decision(part.decided_mono - part.trigger_mono)
        if self.on_part is not None:
            counts = self.counters.as_dict()
            self.on_part(last_verdict=verdict, parts=counts["parts"], rejected=counts["rejected"],
                         **{"yield": counts["yield"]})

    def _pulse(self, device: Any) -> None:
        device.on()
        self._at(self.clock.monotonic() + self.cfg.reject_pulse_ms / 1000, device.off)

    def _message(self, part: Part, verdict: PartVerdict, rejected: bool, seq: int) -> bytes:
        result = part.result
        prediction = result.prediction if result is not None else None
        return PartMessage(
            device_id=self.device_id, seq=seq, external_id=part.external_id, trigger_ts=rfc3339(part.trigger_wall),
            trigger_ts_ms=int(part.trigger_wall * 1000),
            frame_ts_ms=int(result.frame.ts * 1000) if result else None, frame_id=result.frame.id if result else None,
            label=prediction.label if prediction else None,
            score=round(prediction.score, 4) if prediction else None,
            anomaly_score=round(prediction.anomaly_score, 4) if prediction and prediction.anomaly_score is not None
            else None,
            verdict=verdict, rejected=rejected, reason=verdict if rejected else None,
            decision_ms=round(1000 * (part.decided_mono - part.trigger_mono), 2) if part.decided_mono else None,
        ).encode()

    # --- the scheduler thread ---------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at monotonic time ``when`` in the line thread."""
        with self._wake:
            heapq.heappush(self._timers, (when, next(self._order), action))
            self._wake.notify()

    def tick(self) -> bool:
        """Run the actions due by now and refresh the ready output; True once stopped with nothing left to do."""
        now = self.clock.monotonic()
        with self._wake:
            actions = []
            while self._timers and self._timers[0][0] <= now:
                actions.append(heapq.heappop(self._timers)[2])
        for action in actions:
            try:
                action()
            except Exception:  # a GPIO call that fails: logged, the line thread goes on
                logger.exception("line: an output action failed")
        if now >= self._next_ready:
            ready = not self._stopping and now - self._last_frame < 1.0 and self.spool_writable()
            self._set_ready(ready)
            if self.on_check is not None:
                self.on_check(ready)
            self._next_ready = now + READY_CHECK_S
        with self._wake:
            return self._stopping and not self._timers and not self._in_transit

    def _run(self) -> None:
        """The scheduler thread: sleep until the next action is due (or the next ready check), then tick."""
        while not self.tick():
            with self._wake:
                now = self.clock.monotonic()
                due = self._timers[0][0] if self._timers else now + READY_CHECK_S
                if due > now:
                    self._wake.wait(min(due - now, READY_CHECK_S))

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            logger.info("line: ready output %s", "on" if ready else "off")
            if self.outputs is not None and self.outputs.ready is not None:
                self.outputs.ready.value = ready

    def start(self) -> None:
        """Start the scheduler thread (the daemon does; a test on a fake clock ticks by hand instead)."""
        self._thread.start()

    def stop(self) -> None:
        """Drop ready, then reject the parts still in transit at their deadlines (fail-safe) before returning.

        Without the scheduler thread (a fake clock), the parts wait for the ticks that reach their deadlines."""
        with self._wake:
            if self._stopping:
                return
            self._stopping = True
            in_transit = len(self._in_transit)
            self._wake.notify()
        if in_transit:
            logger.info("line: stopping with %d part(s) in transit: each is rejected at its deadline", in_transit)
        self._set_ready(False)
        if self._thread.ident is not None:
            self._thread.join(self.cfg.reject_delay_ms / 1000 + self.cfg.reject_pulse_ms / 1000 + 5)
        if self.outputs is not None:
            self.outputs.close()
