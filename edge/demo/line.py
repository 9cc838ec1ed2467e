"""``linewatch demo --line``: a simulated line with a photo-eye and a reject gate, judged part by part.

Parts ride the simulated conveyor at ``rate`` parts a second (every fourth slot of the belt is
empty, as in the demo). A mock photo-eye on gpiozero's ``MockFactory`` fires when a part is in
the middle of the view, on its own thread and schedule, as a real one would whatever the camera
does; the daemon runs in this process with the same pins (the code paths of a Pi), and a
subscriber counts the ``part`` messages. The reject pin's own state history says when each
pulse started, against trigger + delay. ``stall_ms`` delays every inference and
``camera_loss_s`` blinds the camera mid-run: both show the fail-safe.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.comms.mqtt import connect, make_client, parse_broker
from linewatch.edge.demo.brokers import free_port, local_broker
from linewatch.edge.demo.plc import ModbusPlc, OpcUaPlc, Plc
from linewatch.edge.device import config as config_module
from linewatch.edge.device.daemon import Daemon
from linewatch.edge.device.sources import Captured
from linewatch.edge.errors import DataError
from linewatch.edge.simulator import conveyor, conveyor_truth

logger = logging.getLogger(__name__)

STEPS_PER_PART, EMPTY_EVERY, MIDDLE = 6, 4, 2  # the conveyor's own layout: a part crosses the view in 6 frames
TRIGGER_PIN, REJECT_PIN, READY_PIN = 17, 27, 22
DEVICE_ID = "demo-line"


@dataclass
class LineSimulation:
    """The belt: a conveyor camera and a photo-eye on one schedule from ``t0``, until ``done`` is set.

    A live source, as a camera is: when inference falls behind, stale frames are dropped, not queued.
    """

    parts: int
    rate: float
    seed: int = 7
    camera_loss_s: float = 0.0
    name: str = "line simulation"
    live: bool = True
    reopens: bool = True  # the camera comes back after a loss
    lead_s: float = 0.0  # parts pass untriggered this long first: the device warms up, a PLC waits for TriggerReady
    done: threading.Event = field(default_factory=threading.Event)
    truth: list[str] = field(default_factory=list)  # each triggered part's true class, in order
    t0: float = 0.0
    _frames: Iterator[Any] | None = None
    _next: int = 0
    _lost: bool = False

    @property
    def fps(self) -> float:
        return STEPS_PER_PART * self.rate * EMPTY_EVERY / (EMPTY_EVERY - 1)

    @property
    def total_frames(self) -> int:
        slots = -(-self.parts * EMPTY_EVERY // (EMPTY_EVERY - 1)) + 2
        return slots * STEPS_PER_PART + round(self.lead_s * self.fps)

    def due(self, frame: int) -> float:
        return self.t0 + frame / self.fps

    def start(self, photo_eye_edge: Callable[[], object]) -> threading.Thread:
        """Start the clock and the photo-eye: ``photo_eye_edge()`` at each part's middle frame."""
        self.t0 = time.monotonic() + 0.5
        self._frames = conveyor(self.seed)
        labels = conveyor_truth(self.seed)

        def photo_eye() -> None:
            for slot in itertools.count():
                label = next(labels)
                for _ in range(STEPS_PER_PART - 1):
                    next(labels)
                if label == "empty" or self.due(slot * STEPS_PER_PART) < self.t0 + self.lead_s:
                    continue
                if len(self.truth) == self.parts:
                    return
                delay = self.due(slot * STEPS_PER_PART + MIDDLE) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.truth.append(label)
                photo_eye_edge()

        thread = threading.Thread(target=photo_eye, name="photo-eye", daemon=True)
        thread.start()
        return thread

    def _blind(self, frame: int) -> bool:
        middle = self.total_frames // 2
        return self.camera_loss_s > 0 and middle <= frame < middle + self.camera_loss_s * self.fps

    def frames(self) -> Iterator[Captured]:
        assert self._frames is not None, "start() first"
        while self._next < self.total_frames and not self.done.is_set():
            frame = self._next
            delay = self.due(frame) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            image = next(self._frames).image
            self._next += 1
            if self._blind(frame):
                if not self._lost:
                    self._lost = True
                    raise DataError("camera lost (simulated)")
                continue
            # stamped with when the belt was there, as a camera stamps its frames, however late it arrives
            yield Captured(image, ts=time.time() - (time.monotonic() - self.due(frame)))
        self.done.wait()  # the belt is empty: the daemon is told to stop, not that the camera failed

    def close(self) -> None:
        pass


def pin_history(pin: Any) -> list[tuple[float, bool]]:
    """A mock pin's changes as (monotonic time, new state), from its own history of time deltas."""
    t = pin._last_change - sum(state.timestamp for state in pin.states)
    changes = []
    for state in pin.states:
        t += state.timestamp
        changes.append((t, bool(state.state)))
    return changes


def _pin_times(pin: Any, rising: bool) -> list[float]:
    """Monotonic times of a mock pin's rising (or falling) edges."""
    return [t for t, state in pin_history(pin) if state == rising]


class PartCounter:
    """A subscriber counting the ``part`` messages (by device and seq: a repeat is counted once)."""

    def __init__(self, url: str, protocol: str) -> None:
        self.seen: dict[int, dict[str, Any]] = {}
        self.client = make_client(f"linewatch-line-demo-{int(time.time() * 1000) % 100000}", protocol)
        subscribed = threading.Event()

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            client.subscribe(f"linewatch/{DEVICE_ID}/part", qos=1)  # again on every reconnect

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, msg: self._seen(json.loads(msg.payload))
        connect(self.client, parse_broker(url))
        subscribed.wait(10)

    def _seen(self, part: dict[str, Any]) -> None:
        self.seen.setdefault(part["seq"], part)  # a repeat (at least once) is counted once

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_line_demo(model: str, parts: int = 300, rate: float = 5.0, reject_delay_ms: float = 500.0,
                  broker_url: str | None = None, workdir: str = "build/demo-line", summary_path: str | None = None,
                  stall_ms: float = 0.0, camera_loss_s: float = 0.0, plc: str | None = None) -> dict[str, Any]:
    """Run the simulated line; the summary (also written to ``summary_path``). ``plc`` "modbus" or "opcua": the
    photo-eye is wired to a PLC that triggers the device through the handshake (docs/plc.md), not to the device's
    pin."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    broker = None
    if broker_url is None:
        broker = local_broker(work / "broker")
        broker.start()
        broker_url = broker.url
    protocol = getattr(broker, "protocol", "5")
    simulation = LineSimulation(parts, rate, camera_loss_s=camera_loss_s, lead_s=1.0 if plc else 0.0)
    frame_ms = 1000 / simulation.fps
    cfg = config_module.load(None, {
        "device_id": DEVICE_ID, "state_dir": str(work / "state"), "model.path": model, "source.spec": "conveyor:7",
        "mqtt.broker": broker_url, "mqtt.protocol": protocol, "stats.interval_s": 2,
        **(_plc_settings(plc, work) if plc else {"line.mode": "gpio", "line.trigger_pin": TRIGGER_PIN}),
        "line.reject_pin": REJECT_PIN,
        "line.ready_pin": READY_PIN, "line.pin_factory": "mock", "line.reject_delay_ms": reject_delay_ms,
        "line.reject_pulse_ms": 50, "line.window_ms": 1.5 * frame_ms,
        "line.min_spacing_ms": 0.5 * STEPS_PER_PART * frame_ms})
    counter = PartCounter(broker_url, protocol)
    try:
        daemon = Daemon(cfg, source=simulation)
        if stall_ms:
            invoke = daemon.engine.invoke
            daemon.engine.invoke = lambda tensor: (time.sleep(stall_ms / 1000), invoke(tensor))[1]  # type: ignore
        assert daemon.line is not None and daemon.line.outputs is not None
        factory = daemon.line.outputs.factory
        trigger, reject = factory.pin(TRIGGER_PIN), factory.pin(REJECT_PIN)
        for pin in (trigger, reject):
            pin.clear_states()
        controller = _plc(plc, daemon, work) if plc else None
        if controller is not None:
            controller.start()
        print(f"line: {parts} parts at {rate:g} a second ({simulation.fps:g} frames/s), reject gate "
              f"{reject_delay_ms:g} ms after the photo-eye" + (f", every inference stalled {stall_ms:g} ms"
                                                               if stall_ms else "")
              + (f", the camera lost for {camera_loss_s:g} s mid-run" if camera_loss_s else "")
              + (f", the photo-eye wired to a PLC that triggers over {plc}" if plc else ""), flush=True)
        eye = simulation.start(controller.part if controller else lambda: (trigger.drive_high(), trigger.drive_low()))

        plc_seen: dict[str, Any] = {}

        def stop_when_the_last_part_is_through() -> None:
            eye.join()
            time.sleep(reject_delay_ms / 1000 + 1.0)
            if controller is not None:
                plc_seen.update(controller.stop())
            simulation.done.set()
            daemon.stop_event.set()

        threading.Thread(target=stop_when_the_last_part_is_through, daemon=True).start()
        daemon.run()
        deadline = time.monotonic() + 10
        while len(counter.seen) < daemon.line.counters.parts and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        counter.close()
        if broker is not None:
            broker.stop()
    triggers = controller.trigger_times if controller else _pin_times(trigger, True)
    summary = judge(simulation.truth, counter.seen, triggers, _pin_times(reject, True),
                    reject_delay_ms, daemon.line.counters.double_triggers)
    if controller is not None:
        summary["plc"] = judge_plc(plc_seen, controller.results, counter.seen,
                                   daemon.pipeline.stats.percentile("invoke", 99))
    text = json.dumps(summary, indent=2)
    if summary_path:
        Path(summary_path).write_text(text + "\n")
    print(text, flush=True)
    return summary


OPCUA_USER = "plc"


def _plc_settings(plc: str, work: Path) -> dict[str, Any]:
    """The device's side of the PLC: line mode plc, and the protocol's server on a free loopback port."""
    if plc == "modbus":
        return {"line.mode": "plc", "modbus.listen": "127.0.0.1:0"}
    secret = work / "opcua-password"
    secret.write_text(secrets.token_urlsafe(18) + "\n")
    secret.chmod(0o600)
    return {"line.mode": "plc", "opcua.listen": f"127.0.0.1:{free_port()}", "opcua.username": OPCUA_USER,
            "opcua.password_file": str(secret)}


def _plc(plc: str, daemon: Daemon, work: Path) -> Plc:
    if plc == "modbus":
        assert daemon.modbus is not None
        return ModbusPlc(daemon.modbus.port)
    assert daemon.opcua is not None
    return OpcUaPlc(daemon.opcua.url, OPCUA_USER, (work / "opcua-password").read_text().strip(), work / "plc")


def judge_plc(summary: dict[str, Any], results: list[dict[str, Any]], messages: dict[int, dict[str, Any]],
              invoke_p99_ms: float) -> dict[str, Any]:
    """What the PLC saw through the handshake against the ``part`` messages: the same verdict for every part."""
    by_id = {m.get("external_id"): m["verdict"] for m in messages.values()}
    same = [by_id.get(f"plc-{result['part_id']}") == result["verdict"] for result in results]
    latency = summary["trigger_to_results_ready_ms"]
    return {**summary, "same_verdicts_as_part_messages": bool(same) and all(same) and len(same) == len(by_id),
            "invoke_p99_ms": round(invoke_p99_ms, 2),
            "p99_within_invoke_p99_plus_10ms": latency is not None and latency["p99"] <= invoke_p99_ms + 10}


def judge(truth: list[str], messages: dict[int, dict[str, Any]], triggers: list[float], pulses: list[float],
          delay_ms: float, double_triggers: int) -> dict[str, Any]:
    """Each part's true class against its verdict and the reject pulses, in trigger order."""
    ordered = [messages[seq] for seq in sorted(messages)]
    defective = [label not in ("ok", "empty") for label in truth]
    rejected = [m["rejected"] for m in ordered]
    errors = []
    rejected_triggers = [t for t, m in zip(triggers, ordered) if m["rejected"]]
    for expected, actual in zip(rejected_triggers, pulses):
        errors.append(1000 * (actual - expected) - delay_ms)
    late = sum(m["verdict"] == "late" for m in ordered)
    pair = list(zip(defective, rejected))
    spread = {"p50": round(float(np.percentile(np.abs(errors), 50)), 2),
              "p99": round(float(np.percentile(np.abs(errors), 99)), 2),
              "max": round(float(np.max(np.abs(errors))), 2)} if errors else None
    return {
        "parts": len(truth), "defects_true": sum(defective), "rejected": sum(rejected),
        "defects_caught": sum(d and r for d, r in pair), "defects_passed": sum(d and not r for d, r in pair),
        "good_rejected": sum(r and not d for d, r in pair), "late": late, "double_triggers": double_triggers,
        "verdicts": {v: sum(m["verdict"] == v for m in ordered) for v in ("good", "defect", "late", "no-frame")},
        "not_good_but_passed": sum(m["verdict"] != "good" and not m["rejected"] for m in ordered),
        "good_but_rejected": sum(m["verdict"] == "good" and m["rejected"] for m in ordered),
        "reject_pulses": len(pulses), "timing_error_ms": spread, "mqtt_parts": len(messages),
        "one_message_per_part": len(messages) == len(truth) and sorted(messages) == list(
            range(min(messages, default=1), min(messages, default=1) + len(messages))),
    }
