"""How fast an unattended device recovers and takes a new model, against a real mosquitto on loopback.

    .venv/bin/python benchmarks/unattended.py MODEL.tflite [--away 40] [--repeats 3] [--json]

1. Boot without a broker: the daemon starts, inspects and spools while nothing listens; after
   ``--away`` seconds mosquitto starts on that port; the figure is the time from then to the first
   result a subscriber receives. It depends on where the reconnect backoff stands (1 s doubling
   to ``mqtt.reconnect_max_s``, 10 s by default), so it lies between 0 and that.
2. An over-the-air update of MODEL (re-versioned, so the device really swaps it): the wall time of
   ``linewatch deploy``, process start included, until the device's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linewatch.edge.demo.brokers import MosquittoBroker, free_port
from linewatch.edge.model import artifact
from tests.helpers import Collector, linewatch, start_daemon, stop_daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--away", type=float, default=40.0, help="seconds the broker is missing after boot")
    parser.add_argument("--repeats", type=int, default=3, help="deploys to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linewatch-unattended-"))
    port = free_port()
    broker = MosquittoBroker(port=port, workdir=work / "broker")
    state = work / "state"
    state.mkdir()
    running = state / "model.tflite"
    running.write_bytes(args.model.read_bytes())
    daemon = start_daemon(running, broker.url, "bench", state, source="conveyor:1", fps=30)
    try:
        time.sleep(args.away)
        broker.start()
        appeared = time.monotonic()
        sub = Collector(broker.url, "linewatch/bench/result")
        assert sub.wait_for(lambda s: bool(s.messages), timeout=120), "no result after the broker appeared"
        first_result_s = time.monotonic() - appeared
        sub.close()
        model = artifact.load(args.model)
        update = work / "update.tflite"
        update.write_bytes(artifact.pack(model.flatbuffer, model.card.model_copy(update={"version": "bench"}),
                                         model.labels))
        deploys = []
        for _ in range(args.repeats):
            started = time.monotonic()
            linewatch("deploy", str(update), "--broker", broker.url, "--device", "bench")
            deploys.append(round(time.monotonic() - started, 2))
        stop_daemon(daemon)
    finally:
        daemon.kill()
        broker.stop()
    result = {"broker_away_s": args.away, "first_result_after_broker_s": round(first_result_s, 2),
              "model_kib": update.stat().st_size // 1024, "deploy_s": deploys}
    print(json.dumps(result) if args.json else
          f"first result {result['first_result_after_broker_s']} s after the broker appeared (away {args.away:.0f} s)\n"
          f"deploy of a {result['model_kib']} KiB model: {', '.join(map(str, deploys))} s")


if __name__ == "__main__":
    main()
