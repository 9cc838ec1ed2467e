"""The inference engine: runtime order, quantization math, delegates, and the one-shot device tools."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.edge.device.archive import JpegArchive
from linewatch.edge.errors import ModelError
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine, find_runtime
from linewatch.edge.model.images import prepare
from tests.helpers import linewatch


def test_runtime_order_and_missing_runtime() -> None:
    assert find_runtime(("no_such_runtime.interpreter", "ai_edge_litert.interpreter")).__name__ == \
        "ai_edge_litert.interpreter"
    assert find_runtime().__name__ == "ai_edge_litert.interpreter"  # LiteRT first
    with pytest.raises(ModelError, match="pip install ai-edge-litert"):
        find_runtime(("no_such_runtime.interpreter",))


@pytest.mark.parametrize("which", ["int8", "uint8"])
def test_quantization_uses_each_tensors_scale_and_zero_point(tiny: Path, tiny_uint8: Path, holdout: Path,
                                                              which: str) -> None:
    engine = Engine(artifact.load(tiny if which == "int8" else tiny_uint8))
    scale, zero = engine._in["quantization"]
    pixels = np.arange(0, 256, dtype=np.uint8)[None, :, None].repeat(3, axis=2)
    q = engine.quantize(pixels)
    assert q.dtype == np.dtype(which)
    expected = np.clip(np.round(pixels / scale + zero), np.iinfo(which).min, np.iinfo(which).max)
    assert np.array_equal(q[0], expected.astype(which))
    assert engine._flip_top_bit == (which == "int8" and (scale, zero) == (1.0, -128))  # the XOR path is the one tested
    block = pixels[None].copy()  # the pipeline's way: the same bytes, written over its block
    in_place = engine.quantize(block, in_place=True)
    assert np.array_equal(in_place, q) and np.shares_memory(in_place, block)
    out_scale, out_zero = engine._out["quantization"]
    raw = np.array([out_zero, out_zero + 10], dtype=which)
    assert np.allclose(engine.dequantize(raw), [0.0, 10 * out_scale])
    image = cv2.imread(str(next((holdout / "stain").glob("*.jpg"))))
    prediction = engine.predict(image)
    assert prediction.scores.sum() == pytest.approx(1.0, abs=0.02)
    assert prediction.label == "stain" and [label for label, _ in prediction.top(3)][0] == "stain"


@pytest.mark.parametrize("mode", ["stretch", "crop", "letterbox"])
@pytest.mark.parametrize("size", [(96, 128), (120, 160), (60, 200)])
def test_prepare_into_a_block_row_gives_what_training_saw(mode: str, size: tuple[int, int]) -> None:
    """The device's fast paths (into a given row, no resize at the model's size) change no pixel."""
    bgr = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    if mode == "stretch":
        reference = cv2.cvtColor(cv2.resize(bgr, (128, 96), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    else:
        reference = prepare(bgr, 96, 128, mode)
    block = np.zeros((3, 96, 128, 3), np.uint8)
    returned = prepare(bgr, 96, 128, mode, out=block[1])
    assert np.array_equal(block[1], reference) and np.array_equal(returned, reference)
    assert not block[0].any() and not block[2].any()
    assert np.array_equal(prepare(bgr, 96, 128, mode, "BGR"), cv2.cvtColor(reference, cv2.COLOR_RGB2BGR))


def test_missing_delegate_fails_clearly_or_falls_back(tiny: Path) -> None:
    model = artifact.load(tiny)
    with pytest.raises(ModelError, match="libedgetpu.so.1.*apt install libedgetpu1-std"):
        Engine(model, delegate="edgetpu")
    engine = Engine(model, delegate="/opt/none/libdelegate.so", cpu_fallback=True)
    assert engine.delegate is None and engine.predict(np.zeros((120, 160, 3), np.uint8)).label


def test_classify_prints_a_table_or_json_and_names_bad_files(tiny: Path, holdout: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    folder = holdout / "crack"
    proc = linewatch("classify", str(tiny), str(folder), str(bad), "--json", check=False)
    assert proc.returncode == 3 and f"{bad}: not a readable image" in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 12 and {"path", "label", "score", "top"} <= set(rows[0])
    assert sum(r["label"] == "crack" for r in rows) >= 10
    table = linewatch("classify", str(tiny), str(folder)).stdout.splitlines()
    assert table[0].split() == ["label", "score", "path"] and len(table) == 13


def test_collect_gathers_photos_into_the_training_layout(tmp_path: Path) -> None:
    proc = linewatch("collect", "--source", "conveyor:3", "--label", "ok", "-o", str(tmp_path / "ds"),
                     "--every", "0", "--count", "5")
    photos = sorted((tmp_path / "ds" / "ok").glob("*.jpg"))
    assert len(photos) == 5 and "collected 5 image(s)" in proc.stdout
    assert cv2.imread(str(photos[0])).shape == (120, 160, 3)


def test_archive_stays_under_its_quota(tmp_path: Path) -> None:
    archive = JpegArchive(tmp_path / "review", quota_bytes=60_000, queue_size=64)
    rng = np.random.default_rng(0)
    for i in range(30):
        archive.add(f"scratch/{i:08d}.jpg", rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    archive.close()
    files = sorted((tmp_path / "review").rglob("*.jpg"))
    assert archive.saved == 30 and 0 < len(files) < 30
    assert sum(f.stat().st_size for f in files) <= 60_000
    assert files[-1].name == "00000029.jpg"  # the newest survive


def test_bench_reports_both_loops_from_one_run(tiny: Path, holdout: Path) -> None:
    result = json.loads(linewatch("bench", str(tiny), "--source", str(holdout), "--frames", "40", "--seconds", "0.05",
                                  "--json").stdout)
    assert result["frames"] == 40 and result["bare_fps"] > 0 and result["pipeline_fps"] > 0
    replayed = result["frames_a_loop"]  # the 40 frames as often as a loop of 0.05 s takes
    assert replayed % 40 == 0 and replayed >= max(40, 0.05 * result["bare_fps"] / 4)
    ratios = result["ratios"]  # a round's pipeline over its bare loop, run back to back; the median is the ratio
    assert len(ratios) == 5 and result["ratio"] == pytest.approx(sorted(ratios)[2], abs=0.001)
    assert min(ratios) <= result["pipeline_fps"] / result["bare_fps"] * 1.01 and result["bare_fps"] > 0
    assert 0 < result["cores_busy"] <= 1.01  # every thread's CPU over the run's time, a share of the cores
    assert result["max_rss_mb"] > 0 and set(result["stage_ms_p50"]) >= {"preprocess", "invoke", "publish"}
    cpu = result["cpu_us_per_frame"]
    assert cpu["bare"] > 0 and cpu["bare_in_blocks"] > 0
    assert 0 < cpu["outside_invoke"] < cpu["pipeline"]  # preparing, results and JSON at least; never the whole
    assert cpu["outside_share_of_invoke"] == pytest.approx(cpu["outside_invoke"] / cpu["bare_in_blocks"], rel=0.05,
                                                           abs=0.002)
    parts = cpu["outside_parts"]  # each step timed alone; what they do not explain is the rest
    assert set(parts) == {"prepare", "quantize", "predictions", "json", "rest"} and parts["prepare"] > 0
    assert parts["json"] > 0 and parts["rest"] == pytest.approx(
        max(0.0, cpu["outside_invoke"] - sum(v for k, v in parts.items() if k != "rest")), abs=0.3)
    assert cpu["steps_after_idle"] > 0  # the same steps again, each block after idling: the host's price for sleeping
    assert result["serial_fps"] > 0 and result["serial_ratio"] > 0
    live = result["live"]  # paced as a camera at half the bare rate: every frame classified or counted as dropped
    assert live["fps"] == pytest.approx(result["bare_fps"] / 2, rel=0.01) and 0 < live["held_fps"] <= live["fps"] * 1.05
    assert live["frames"] + live["dropped"] == replayed
    assert 1 <= result["frames_per_call"] <= 32


@pytest.mark.parametrize("which", ["int8", "uint8"])
def test_a_block_invoked_at_once_gives_each_frames_own_scores(tiny: Path, tiny_uint8: Path, holdout: Path,
                                                              which: str) -> None:
    """Batched invoke resizes the interpreter: every row must be its own frame's, whatever the block size."""
    engine = Engine(artifact.load(tiny if which == "int8" else tiny_uint8), num_threads=2)
    images = [cv2.imread(str(p)) for p in sorted(holdout.rglob("*.jpg"))[:12]]
    one_by_one = np.stack([engine.predict(image).scores for image in images])
    block = engine.quantize(np.stack([engine.prepare(image) for image in images]))
    for size in (12, 5, 1, 12):  # grow, shrink, single, grow again
        rows = np.concatenate([engine.invoke(block[i : i + size]) for i in range(0, len(block), size)])
        assert np.array_equal(engine.dequantize(rows), one_by_one)
    engine.batching = False  # as with a delegate: the block goes frame by frame, with the same result
    assert np.array_equal(engine.dequantize(engine.invoke(block)), one_by_one)


def test_bench_with_a_shadow_reports_what_the_current_model_keeps_and_what_the_candidate_costs(
        tiny: Path, holdout: Path) -> None:
    result = json.loads(linewatch("bench", str(tiny), "--source", str(holdout), "--frames", "40", "--seconds", "0.05",
                                  "--threads", "1", "--shadow", str(tiny), "--json").stdout)
    shadow = result["shadow"]
    assert shadow["candidate_threads"] == 1 and len(shadow["ratios"]) == 5
    assert shadow["ratio"] == pytest.approx(sorted(shadow["ratios"])[2], abs=0.001) and shadow["pipeline_fps"] > 0
    assert shadow["candidate_frames"] > 0 and shadow["candidate_every"] >= 1
    assert shadow["agreement"] == 1.0  # the same model beside itself
    assert shadow["latency_ms"]["candidate"] > 0 and shadow["cpu_percent"]["candidate"] > 0


def test_bench_with_the_plc_servers_polls_them_from_another_process_and_reports_both_ratios(
        tiny: Path, holdout: Path) -> None:
    result = json.loads(linewatch("bench", str(tiny), "--source", str(holdout), "--frames", "40", "--seconds", "0.2",
                                  "--threads", "1", "--plc", "--json").stdout)
    plc = result["plc"]
    assert len(plc["ratios_alone"]) == len(plc["ratios_polled"]) == 5
    assert plc["ratio_polled"] == pytest.approx(sorted(plc["ratios_polled"])[2], abs=0.001)
    assert plc["change"] == pytest.approx(plc["ratio_polled"] / plc["ratio_alone"] - 1, abs=0.002)
    # both pollers ran while the pipeline did (the rate is theirs to keep on a loaded machine: a floor, not a figure)
    assert plc["polls_per_s"]["modbus"] > 20 and plc["polls_per_s"]["opcua"] > 20, plc
