"""``linewatch bench``: the full pipeline against a bare ``invoke()`` loop, in one run.

Three loops run on the same model and the same frames, one after the other, so their ratios
hold on a noisy shared machine where absolute frames/s do not. Each runs for at least
``seconds`` (the frames replayed as often as that takes): the pipeline starts its threads and
fills and drains once a run, which the daemon pays once a start and a run of a few dozen
milliseconds would count as a cost of every frame.

- bare: ``invoke()`` on frames prepared beforehand, one at a time: the interpreter's limit;
- pipeline: what the daemon runs, from the decoded frame to the result's JSON bytes (the
  sink builds each result message as the daemon does; the spool and the network are left
  out: the spool's CPU a frame is measured beside it, and ``make bench`` measures the
  network through a real broker);
- serial: the loop a tutorial writes, resize, invoke and JSON in turn on one thread.

Then the pipeline is fed as a live camera at half the bare loop's rate, where it must not
drop a frame, and must keep the pace: a replayed camera that cannot deliver on time falls
behind instead of dropping, so the rate it held is reported beside the one asked.

With ``shadow``, a candidate model runs beside the pipeline as a device runs one
(``linewatch.edge.device.shadow``: its own interpreter thread, the newest frame whenever it is
free), in rounds against the bare loop again: what the current model keeps of its bare rate,
and what the candidate costs and sees.

With ``plc``, the pipeline runs again beside the PLC's servers (Modbus TCP and OPC UA over
Basic256Sha256 with a password, on a handshake), each polled at ``POLL_HZ`` by a client in a
process of its own, as a PLC and a SCADA poll a device: in rounds, the pipeline alone and polled
against the bare loop, so the two ratios come from the same stretch of the host's speed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.comms.spool import Outgoing, Spool
from linewatch.edge.device.config import SourceSection
from linewatch.edge.device.pipeline import Frame, Pipeline, PipelineStats, Result
from linewatch.edge.device.results import ResultEncoder
from linewatch.edge.device.shadow import ShadowRun
from linewatch.edge.device.sources import Captured, open_source
from linewatch.edge.device.sources.pacing import Pacer
from linewatch.edge.device.system import max_rss_mb, process_age
from linewatch.edge.errors import DataError
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine


class ReplaySource:
    """Frames held in memory, replayed as a finite source (or live at ``fps``), so every loop sees the same ones."""

    name = "replay"
    reopens = False

    def __init__(self, frames: list[Captured], fps: float | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self._frames = frames
        self.live = fps is not None
        self.fps = fps
        self._pacer = Pacer(fps)
        self._on_end = on_end  # a live source never ends by itself: this stops the pipeline instead

    def frames(self) -> Iterator[Captured]:
        for frame in self._frames:
            self._pacer.wait()
            yield frame
        if self._on_end is not None:
            self._on_end()

    def close(self) -> None:
        pass


def _read_frames(spec: str, count: int) -> list[Captured]:
    source = open_source(spec)
    frames: list[Captured] = []
    try:
        for captured in source.frames():
            frames.append(captured)
            if len(frames) >= count:
                break
    finally:
        source.close()
    if not frames:
        raise DataError(f"source {spec} gave no frames to benchmark with")
    return frames


def _parts_us(engine: Engine, captured: list[Captured], per_call: int, idle_s: float,
              repeats: int) -> tuple[dict[str, float], float, list[bytes]]:
    """Microseconds of CPU a frame of each step the pipeline adds to ``invoke()``, timed alone on one thread, a block
    of ``per_call`` frames after another (best of ``repeats``); the same steps together when the thread idles
    ``idle_s`` before each block, as the pipeline's threads idle while the interpreter works; and the frames'
    result messages (for timing the spool with real payloads).

    The second figure is the host's, not the code's: a thread that has slept finds its caches cold (on a virtual
    machine an idle vCPU may have run another tenant meanwhile), and pays for it in CPU for a while.
    """
    pixels = np.empty((len(captured), engine.height, engine.width, 3), np.uint8)
    frames = [Frame(i, time.time(), c.image, c.path) for i, c in enumerate(captured, 1)]
    encode = ResultEncoder("bench", engine.model, top_k=3)

    def prepare(lo: int, hi: int) -> None:
        for c, row in zip(captured[lo:hi], pixels[lo:hi]):
            engine.prepare(c.image, row)

    def quantize(lo: int, hi: int) -> None:  # in place, as the pipeline does (its bits flip back and forth here)
        engine.quantize(pixels[lo:hi], in_place=True)

    def describe(lo: int, hi: int) -> list[Result]:
        return [Result(f, p, engine.model) for f, p in zip(frames[lo:hi], engine.predictions(raw[lo:hi]))]

    prepare(0, len(captured))  # the frames' own pixels, so the predictions and their JSON are the real ones
    raw = np.concatenate([engine.invoke(engine.quantize(pixels[i : i + per_call]))
                          for i in range(0, len(pixels), per_call)])
    results = describe(0, len(captured))
    steps: dict[str, Callable[[int, int], object]] = {
        "prepare": prepare, "quantize": quantize, "predictions": describe,
        "json": lambda lo, hi: [encode(r, r.frame.id) for r in results[lo:hi]],
    }

    def blocks_cpu_s(run: Callable[[int, int], object], idle: float) -> float:
        """Best of ``repeats``: CPU seconds ``run`` takes over the frames, a block at a time, idling before each."""
        best = float("inf")
        for _ in range(repeats):
            cpu = 0.0
            for lo in range(0, len(captured), per_call):
                if idle:
                    time.sleep(idle)
                started = time.thread_time()
                run(lo, lo + per_call)
                cpu += time.thread_time() - started
            best = min(best, cpu)
        return best

    def every_step(lo: int, hi: int) -> None:
        for run in steps.values():
            run(lo, hi)

    alone = {name: round(1e6 * blocks_cpu_s(run, 0.0) / len(captured), 1) for name, run in steps.items()}
    after_idle = round(1e6 * blocks_cpu_s(every_step, idle_s) / len(captured), 1)
    return alone, after_idle, [encode(r, r.frame.id) for r in results]


def _same(payload: bytes) -> Callable[[int], bytes]:
    """A message builder whose payload does not depend on its seq."""
    return lambda seq: payload


def _spool_us(payloads: list[bytes], per_call: int, repeats: int) -> dict[str, float]:
    """Microseconds of CPU a frame the daemon adds for the spool (storing a result, forgetting it once the broker
    acknowledged it), a message at a time and in blocks of ``per_call``, as the daemon does now."""
    timed = {}
    with tempfile.TemporaryDirectory() as folder:
        spool = Spool(Path(folder) / "spool.sqlite")
        try:
            for name, size in (("one_by_one", 1), ("in_blocks", per_call)):
                best = float("inf")
                for _ in range(repeats):
                    started = time.process_time()
                    for i in range(0, len(payloads), size):
                        block = payloads[i : i + size]
                        spool.append_many([Outgoing("bench/result", _same(p), "result") for p in block])
                    ids = [entry.id for entry in spool.after(0, len(payloads))]
                    for i in range(0, len(ids), size):
                        spool.remove(ids[i : i + size])
                    best = min(best, time.process_time() - started)
                timed[name] = round(1e6 * best / len(payloads), 1)
        finally:
            spool.close()
    return timed


def _outside_s(stats: PipelineStats) -> float:
    """CPU seconds a frame the pipeline's threads spent outside ``invoke()``."""
    return sum(stats.outside_cpu_s.values()) / max(1, stats.frames)


POLL_HZ = 100.0


def _poll(modbus_port: int, opcua_url: str, password: str, certificates: str, stop: Any, counts: Any) -> None:
    """In a process of its own: a Modbus client and an OPC UA client each reading the handshake's state at
    ``POLL_HZ``, until ``stop`` is set; ``counts`` gets how many reads each made."""
    import asyncio

    from asyncua.client.client import Client
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from pymodbus.client import ModbusTcpClient

    from linewatch.edge.device.plc.handshake import OPCUA_NAMESPACE

    logging.getLogger("asyncua").setLevel(logging.ERROR)

    def paced() -> Iterator[float]:
        """Waits for each poll's turn, ``POLL_HZ`` a second on a schedule (a slow read does not slow the next)."""
        due = time.monotonic()
        while not stop.is_set():
            due += 1 / POLL_HZ
            yield max(0.0, due - time.monotonic())

    def modbus() -> None:
        client = ModbusTcpClient("127.0.0.1", port=modbus_port)
        client.connect()
        for wait in paced():
            client.read_discrete_inputs(0, count=7, device_id=1)
            client.read_input_registers(0, count=8, device_id=1)
            counts[0] += 1
            time.sleep(wait)
        client.close()

    async def opcua() -> None:
        key, cert = Path(certificates) / "poll-key.pem", Path(certificates) / "poll-cert.der"
        await setup_self_signed_certificate(key, cert, "urn:linewatch:bench", "localhost",
                                            [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "bench"})
        client = Client(opcua_url)
        client.application_uri = "urn:linewatch:bench"
        client.set_user("bench")
        client.set_password(password)
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
        async with client:
            ns = await client.get_namespace_index(OPCUA_NAMESPACE)
            nodes = [client.get_node(f"ns={ns};s={name}") for name in ("ResultsReady", "PartId", "Verdict", "Parts")]
            for wait in paced():
                await client.read_values(nodes)
                counts[1] += 1
                await asyncio.sleep(wait)

    thread = threading.Thread(target=modbus)
    thread.start()
    asyncio.run(opcua())
    thread.join()


class _Polled:
    """The PLC's servers on a handshake, and the pollers' process, for ``bench(plc=True)``."""

    def __init__(self, folder: Path) -> None:
        import multiprocessing
        import secrets

        from linewatch.edge.device.plc.handshake import Handshake
        from linewatch.edge.device.plc.modbus import ModbusServer
        from linewatch.edge.device.plc.opcua import OpcUaServer

        handshake = Handshake(lambda external_id: None, dict, lambda: "0" * 64)
        handshake.beat(True)
        password = secrets.token_urlsafe(12)
        self.modbus = ModbusServer(handshake, "127.0.0.1", 0)
        self.modbus.start()
        with socket.socket() as probe:  # a free loopback port for the OPC UA server, which takes no port 0
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.opcua = OpcUaServer(handshake, "127.0.0.1", port, device_id="bench", state_dir=folder, username="bench",
                                 password=password)
        self.opcua.start()
        context = multiprocessing.get_context("spawn")
        self.stop, self.counts = context.Event(), context.Array("l", 2)
        self.process = context.Process(target=_poll, args=(self.modbus.port, self.opcua.url, password, str(folder),
                                                           self.stop, self.counts), daemon=True)
        self.process.start()
        deadline = time.monotonic() + 60
        while min(self.counts[:]) < 10 and time.monotonic() < deadline and self.process.is_alive():
            time.sleep(0.1)
        if min(self.counts[:]) < 10:
            raise DataError("bench --plc: the Modbus and OPC UA pollers did not start polling")

    def reads(self) -> list[int]:
        return list(self.counts[:])

    def close(self) -> None:
        self.stop.set()
        self.process.join(20)
        self.opcua.stop()
        self.modbus.stop()


def bench(model_path: str, source_spec: str, frames: int = 300, threads: int | None = None,
          labels: str | None = None, repeats: int = 5, seconds: float = 0.5,
          shadow: str | None = None, plc: bool = False) -> dict[str, Any]:
    """Frames/s of the bare, pipeline and serial loops (``repeats`` rounds of each, back to back: the best rates,
    the median of the rounds' ratios), CPU per frame, and the frames a live-paced pipeline drops; with ``shadow``
    (a candidate's .tflite), the pipeline again with it beside.

    What capture, preparation, hand-offs and payloads cost besides ``invoke()`` is the CPU the
    pipeline's threads spent outside it, read from each thread's own clock: the difference of
    the pipeline's and the bare loop's CPU would carry both loops' noise, as large on a shared
    machine as the cost itself.
    """
    model = artifact.load(model_path, labels)
    engine = Engine(model, threads)
    first_result_s = process_age()
    captured = _read_frames(source_spec, frames)
    blocks = engine.quantize(np.stack([engine.prepare(c.image) for c in captured]))
    replays = 1  # passes over the frames a loop makes: set after the warm-up, for loops of ``seconds``

    def bare(block: int = 1) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(replays):
            for i in range(0, len(blocks), block):
                engine.invoke(blocks[i : i + block])
        count = replays * len(blocks)
        return count / (time.perf_counter() - started), (time.process_time() - cpu) / count

    def pipeline(fps: float | None = None, beside: ShadowRun | None = None) -> tuple[float, float, PipelineStats]:
        """Frames/s, process CPU a frame, and the run's stats; ``beside``: a candidate in shadow."""
        encode = ResultEncoder("bench", model, top_k=3)

        def sink(results: list[Result]) -> None:
            for result in results:
                encode(result, result.frame.id)
                if beside is not None:
                    beside.offer(result)

        stop = threading.Event()
        # A finite source ends by itself; stopping at its end could cut its last block short.
        run = Pipeline(ReplaySource(captured * replays, fps, None if fps is None else stop.set), engine, sink)
        started, cpu = time.perf_counter(), time.process_time()
        stats = run.run(stop)
        return stats.frames / (time.perf_counter() - started), (time.process_time() - cpu) / stats.frames, stats

    def serial() -> float:
        started = time.perf_counter()
        for frame in captured * replays:
            prediction = engine.predict(frame.image)  # prepare, quantize, invoke, dequantize
            json.dumps({"label": prediction.label, "score": prediction.score, "ts": time.time(),
                        "scores": dict(zip(prediction.labels, prediction.scores.tolist()))}).encode()
        return replays * len(captured) / (time.perf_counter() - started)

    bare()  # warm-up: caches, XNNPACK packing
    replays = math.ceil(seconds * bare()[0] / len(captured))
    rounds: list[tuple[float, float, float]] = []  # each loop's frames/s, run back to back
    bare_cpu = pipeline_cpu = outside = busy = math.inf
    stats: PipelineStats | None = None  # the last round's
    for _ in range(repeats):
        bare_fps, cpu = bare()
        bare_cpu = min(bare_cpu, cpu)
        pipeline_fps, cpu, stats = pipeline()
        if not rounds or pipeline_fps > max(r[1] for r in rounds):
            busy = pipeline_fps * cpu  # cores the fastest pipeline run kept busy, every thread's CPU over its time
        pipeline_cpu, outside = min(pipeline_cpu, cpu), min(outside, _outside_s(stats))
        rounds.append((bare_fps, pipeline_fps, serial()))
    if stats is None:
        raise ValueError(f"repeats {repeats}: at least one round is needed")
    bare_fps, pipeline_fps, serial_fps = (max(r[i] for r in rounds) for i in range(3))
    live_fps = bare_fps / 2
    held_fps, _, live = pipeline(live_fps)
    # The interpreter's own cost in blocks of the pipeline's mean size, against which the rest is weighed.
    per_call = max(1, round(stats.frames / max(1, stats.blocks)))
    block_cpu = min(bare(per_call)[1] for _ in range(repeats))
    outside_us = 1e6 * outside
    # Between blocks the pipeline's threads idle about as long as the interpreter takes for one.
    parts, after_idle_us, payloads = _parts_us(engine, captured, per_call, per_call / bare_fps, repeats)
    spool_us = _spool_us(payloads, per_call, repeats)
    in_shadow: dict[str, Any] | None = None
    if shadow is not None:
        candidate = artifact.load(shadow)
        candidate_engine = Engine(candidate, 1)
        shadow_rounds = []
        for _ in range(repeats):
            alone_fps, _ = bare()
            run = ShadowRun("bench", candidate, candidate_engine, SourceSection(spec=source_spec),
                            lambda: stats.percentile("invoke", 50) if stats else 0.0)
            run.start()
            beside_fps, _, _ = pipeline(beside=run)
            run.stop()
            shadow_rounds.append((alone_fps, beside_fps, run.message(model)))
        last = shadow_rounds[-1][2]
        in_shadow = {
            "candidate": shadow, "candidate_threads": candidate_engine.num_threads,
            "pipeline_fps": round(max(b for _, b, _ in shadow_rounds), 1),
            # What the current model's pipeline keeps of its bare loop with the candidate beside it.
            "ratio": round(statistics.median(b / a for a, b, _ in shadow_rounds), 3),
            "ratios": [round(b / a, 3) for a, b, _ in shadow_rounds],
            "candidate_every": statistics.median(m.every for _, _, m in shadow_rounds),
            "candidate_frames": last.frames, "agreement": last.agreement,
            "latency_ms": last.latency_ms.model_dump(), "cpu_percent": last.cpu_percent.model_dump(),
        }
    polled: dict[str, Any] | None = None
    if plc:
        with tempfile.TemporaryDirectory() as folder:
            servers = _Polled(Path(folder))
            plc_rounds = []
            try:
                for _ in range(repeats):
                    alone_bare, _ = bare()
                    alone, _, _ = pipeline()
                    before = servers.reads()
                    started = time.perf_counter()
                    beside, _, _ = pipeline()
                    elapsed = time.perf_counter() - started
                    rate = [(after - b) / elapsed for after, b in zip(servers.reads(), before)]
                    plc_rounds.append((alone_bare, alone, beside, rate))
            finally:
                servers.close()
        polled = {
            "poll_hz": POLL_HZ,
            "polls_per_s": {"modbus": round(statistics.median(r[3][0] for r in plc_rounds), 1),
                            "opcua": round(statistics.median(r[3][1] for r in plc_rounds), 1)},
            "ratio_alone": round(statistics.median(a / b for b, a, _, _ in plc_rounds), 3),
            "ratio_polled": round(statistics.median(p / b for b, _, p, _ in plc_rounds), 3),
            "ratios_alone": [round(a / b, 3) for b, a, _, _ in plc_rounds],
            "ratios_polled": [round(p / b, 3) for b, _, p, _ in plc_rounds],
        }
        polled["change"] = round(polled["ratio_polled"] / polled["ratio_alone"] - 1, 3)
    return {
        "model": str(model_path),
        "source": source_spec,
        "frames": len(captured),
        "frames_a_loop": replays * len(captured),
        "threads": engine.num_threads,
        "bare_fps": round(bare_fps, 1),
        "pipeline_fps": round(pipeline_fps, 1),
        # A round's loops run back to back, so the host's speed, which drifts on a shared machine, is about the same
        # for them: the median of the rounds' ratios, not the ratio of the best runs, which may come from two speeds.
        "ratio": round(statistics.median(p / b for b, p, _ in rounds), 3),
        "ratios": [round(p / b, 3) for b, p, _ in rounds],
        # Near 1 with every core given to the interpreter: no core waits, so only less CPU a frame is faster.
        "cores_busy": round(busy / (os.cpu_count() or 1), 2),
        "serial_fps": round(serial_fps, 1),
        "serial_ratio": round(statistics.median(s / b for b, _, s in rounds), 3),
        # Fed as a camera at half what the bare loop can classify: every frame should be classified.
        "live": {"fps": round(live_fps, 1), "held_fps": round(held_fps, 1), "frames": live.frames,
                 "dropped": live.dropped},
        # CPU time a frame: bare and pipeline, the whole process's (every thread); outside invoke, the pipeline's
        # threads' outside their invoke() calls, weighed against the interpreter's on blocks of the size the
        # pipeline used.
        "cpu_us_per_frame": {"bare": round(1e6 * bare_cpu, 1), "bare_in_blocks": round(1e6 * block_cpu, 1),
                             "pipeline": round(1e6 * pipeline_cpu, 1),
                             "outside_invoke": round(outside_us, 1),
                             "outside_share_of_invoke": round(outside_us / (1e6 * block_cpu), 3)
                             if block_cpu > 0 else None,
                             # Where it goes: each step timed alone on one thread; the rest is hand-offs between
                             # the threads, per-frame objects, the interpreter's threads waking, and the host's
                             # price for a thread that idled: the same steps after idling a block's invoke.
                             "outside_parts": {**parts, "rest": round(max(0.0, outside_us - sum(parts.values())), 1)},
                             "steps_after_idle": after_idle_us},
        # Not in the pipeline above: the daemon's spool, a frame's result stored and forgotten once acknowledged.
        "spool_us_per_frame": spool_us,
        "frames_per_call": round(stats.frames / max(1, stats.blocks), 1),
        "stage_ms_p50": {s: round(stats.percentile(s, 50), 3) for s in stats.timings_ms},
        "model_loaded_s": round(first_result_s, 3),
        "max_rss_mb": max_rss_mb(),
        **({"shadow": in_shadow} if in_shadow is not None else {}),
        **({"plc": polled} if polled is not None else {}),
    }
