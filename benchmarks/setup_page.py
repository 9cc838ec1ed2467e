"""What the setup page costs the daemon: frames/s without it, with it and nobody watching, and with a viewer.

    .venv/bin/python benchmarks/setup_page.py [MODEL.tflite] [--frames 4000] [--repeats 3] [--json] [--record]

The daemon runs on the unpaced simulated conveyor (every core busy: the worst case for a
page that takes CPU) against a real mosquitto on loopback, ``--max-frames`` frames, three ways,
alternated and repeated, the best of each kept (this machine is shared and noisy):

- ``off``: no ``--http``;
- ``idle``: ``--http`` on, nobody connected;
- ``viewer``: one viewer, as the page behaves: the live JPEG fetched again as soon as it has
  loaded plus 250 ms, and the server-sent status stream open.

It prints frames/s and the ratios to ``off``; ``--record`` writes them into docs/http.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import urllib.request
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recording import record  # noqa: E402
from linewatch.edge.demo.brokers import MosquittoBroker, free_port  # noqa: E402

TOKEN = "bench"


def _viewer(port: int, stop: threading.Event) -> None:
    """The page's requests: the live frame every 250 ms after the last one, the status stream held open."""
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def stream() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/stream",
                                                               headers=headers), timeout=60) as reply:
                while not stop.is_set() and reply.readline():
                    pass
        except OSError:
            pass

    threading.Thread(target=stream, daemon=True).start()
    while not stop.is_set():
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/frame.jpg",
                                                               headers=headers), timeout=10) as reply:
                reply.read()
        except OSError:
            pass  # not up yet
        stop.wait(0.25)


def run(model: Path, broker: MosquittoBroker, frames: int, mode: str, work: Path) -> float:
    port = free_port()
    args = [sys.executable, "-m", "linewatch.edge.cli", "run", "--model", str(model), "--source", "conveyor:4",
            "--broker", broker.url, "--device-id", f"bench-{mode}", "--state-dir", str(work / mode),
            "--max-frames", str(frames), "--json"]
    if mode != "off":
        args += ["--http", f"127.0.0.1:{port}"]
    stop = threading.Event()
    if mode == "viewer":
        threading.Thread(target=_viewer, args=(port, stop), daemon=True).start()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "LINEWATCH_HTTP_TOKEN": TOKEN})  # a secret: never on argv
    stop.set()
    if proc.returncode:
        sys.exit(f"linewatch run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["fps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?", default=ROOT / "tests" / "fixtures" / "tiny.tflite")
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the figures into docs/http.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linewatch-page-bench-"))
    broker = MosquittoBroker(workdir=work / "broker")
    broker.start()
    best: dict[str, float] = {}
    try:
        for _ in range(args.repeats):
            for mode in ("off", "idle", "viewer"):
                best[mode] = max(best.get(mode, 0.0), run(args.model, broker, args.frames, mode, work))
                print(f"{mode:<7} {best[mode]:8.1f} frames/s (best so far)", flush=True)
    finally:
        broker.stop()
    result = {"fps": best, "idle_ratio": round(best["idle"] / best["off"], 3),
              "viewer_ratio": round(best["viewer"] / best["off"], 3)}
    print(json.dumps(result) if args.json else
          f"setup page idle: {result['idle_ratio']:.1%} of the frames/s without it; one viewer: "
          f"{result['viewer_ratio']:.1%}")
    if args.record:
        record(ROOT / "docs" / "http.md", "setup-page", "\n".join([
            f"Measured {date.today().isoformat()} on {os.cpu_count()} cores of {platform.machine()}: "
            f"`python benchmarks/setup_page.py` ({args.frames:,} frames, best of {args.repeats}).", "",
            "| the page | frames/s | of the frames/s without it |", "| --- | --- | --- |",
            f"| off | {best['off']:.0f} | 100% |",
            f"| on, nobody watching | {best['idle']:.0f} | {result['idle_ratio']:.1%} |",
            f"| one viewer (live view every 250 ms, status stream) | {best['viewer']:.0f} | "
            f"{result['viewer_ratio']:.1%} |", "",
            "Differences of a few percent either way are this shared machine's noise between runs.", ""]))


if __name__ == "__main__":
    main()
