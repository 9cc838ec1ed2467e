"""``linewatch bench``: the full pipeline against a bare ``invoke()`` loop, in one run.

Both run on the same model and the same frames, one after the other, so the ratio holds on
a noisy shared machine where absolute frames/s do not. The pipeline's sink builds and
serializes each result as the daemon does; only the network is left out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from linewatch.edge.device.pipeline import Pipeline, PipelineStats, Result
from linewatch.edge.device.results import model_ref, result_payload
from linewatch.edge.device.sources import Captured, open_source
from linewatch.edge.device.system import max_rss_mb, process_age
from linewatch.edge.errors import DataError
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine


class ReplaySource:
    """Frames held in memory, replayed as a finite source, so both loops see the same ones."""

    name = "replay"
    live = False
    reopens = False

    def __init__(self, frames: list[Captured]) -> None:
        self._frames = frames

    def frames(self) -> Iterator[Captured]:
        yield from self._frames

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


def bench(model_path: str, source_spec: str, frames: int = 300, threads: int | None = None,
          labels: str | None = None, repeats: int = 3) -> dict[str, Any]:
    """Frames/s and CPU per frame of the bare loop and of the pipeline, alternated ``repeats`` times; best of each.

    The CPU is the process's (every thread's) per frame, so the pipeline's less the bare loop's
    is what capture, preparation, hand-offs and payloads cost besides ``invoke()``.
    """
    model = artifact.load(model_path, labels)
    engine = Engine(model, threads)
    first_result_s = process_age()
    captured = _read_frames(source_spec, frames)
    tensors = [engine.quantize(engine.prepare(c.image)) for c in captured]

    def bare() -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        for tensor in tensors:
            engine.invoke(tensor)
        return len(tensors) / (time.perf_counter() - started), (time.process_time() - cpu) / len(tensors)

    def pipeline() -> tuple[float, float, PipelineStats]:
        ref, good = model_ref(model), set(model.card.good_labels)

        def sink(result: Result) -> None:
            result_payload(result, "bench", result.frame.id, ref, good, top_k=3).encode()

        run = Pipeline(ReplaySource(captured), engine, sink)
        started, cpu = time.perf_counter(), time.process_time()
        stats = run.run(threading.Event())
        return stats.frames / (time.perf_counter() - started), (time.process_time() - cpu) / stats.frames, stats

    bare()  # warm-up: caches, XNNPACK packing
    bare_fps, bare_cpu = bare()
    pipeline_fps, pipeline_cpu, stats = pipeline()
    for _ in range(repeats - 1):
        fps, cpu = bare()
        bare_fps, bare_cpu = max(bare_fps, fps), min(bare_cpu, cpu)
        fps, cpu, stats = pipeline()
        pipeline_fps, pipeline_cpu = max(pipeline_fps, fps), min(pipeline_cpu, cpu)
    return {
        "model": str(model_path),
        "source": source_spec,
        "frames": len(captured),
        "threads": engine.num_threads,
        "bare_fps": round(bare_fps, 1),
        "pipeline_fps": round(pipeline_fps, 1),
        "ratio": round(pipeline_fps / bare_fps, 3),
        # CPU time of the whole process per frame (every thread): what the pipeline spends besides invoke().
        "cpu_us_per_frame": {"bare": round(1e6 * bare_cpu, 1), "pipeline": round(1e6 * pipeline_cpu, 1),
                             "outside_invoke": round(1e6 * max(0.0, pipeline_cpu - bare_cpu), 1),
                             "outside_share_of_invoke": round(max(0.0, pipeline_cpu - bare_cpu) / bare_cpu, 3)
                             if bare_cpu > 0 else None},
        "stage_ms_p50": {s: round(stats.percentile(s, 50), 3) for s in stats.timings_ms},
        "model_loaded_s": round(first_result_s, 3),
        "max_rss_mb": max_rss_mb(),
    }
