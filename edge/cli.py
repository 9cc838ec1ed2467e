"""The ``linewatch`` command. Imports are lazy so ``--help`` answers at once, even beside TensorFlow.

Each package adds its own subcommands: ``edge`` the device ones, ``train`` and ``convert``
the workstation ones when they are installed (the device has no TensorFlow).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from collections.abc import Sequence

from edge import __version__
from edge.errors import LinewatchError, UsageError

EXIT_CODES = """exit codes:
  0  success
  1  internal error (a bug: please report it with the log)
  2  usage or configuration error
  3  input data error (missing folder, unreadable source)
  4  model error (missing, truncated or unsuitable model file)
  5  converted model rejected by the parity gate
  6  MQTT broker unreachable or refused the connection
  130 interrupted (Ctrl-C)"""

WORKSTATION_COMMANDS = ("train.cli", "convert.cli")


# ``linewatch run`` flags and the config keys they set (see edge/config.py).
RUN_FLAGS = {
    "model": "model.path", "labels": "model.labels", "threads": "model.threads", "delegate": "model.delegate",
    "cpu_fallback": "model.cpu_fallback", "source": "source.spec", "fps": "source.fps", "loop": "source.loop",
    "roi": "source.roi", "rotate": "source.rotate", "broker": "mqtt.broker", "prefix": "mqtt.prefix",
    "protocol": "mqtt.protocol", "username": "mqtt.username", "password_file": "mqtt.password_file",
    "ca_file": "mqtt.ca_file", "cert_file": "mqtt.cert_file", "key_file": "mqtt.key_file",
    "device_id": "device_id", "state_dir": "state_dir", "result_mode": "results.mode", "top_k": "results.top_k",
    "stats_interval": "stats.interval_s", "review_dir": "review.dir", "review_below": "review.below",
    "review_quota_mb": "review.quota_mb", "ha_discovery": "homeassistant.discovery",
}


def _default_state_dir() -> str:
    """/var/lib/linewatch for the service; a folder of the user's own for a quick start."""
    system = Path("/var/lib/linewatch")
    if system.is_dir() and os.access(system, os.W_OK):
        return str(system)
    return str(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "linewatch")


def _cmd_run(args: argparse.Namespace) -> int:
    from edge import config
    from edge.daemon import Daemon

    overrides = {key: getattr(args, flag) for flag, key in RUN_FLAGS.items() if getattr(args, flag) not in (None, False)}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item}: use KEY=VALUE, e.g. --set results.mode=change")
        overrides[key.strip()] = value
    path = Path(args.config) if args.config else (config.DEFAULT_PATH if config.DEFAULT_PATH.is_file() else None)
    cfg = config.load(path, overrides, defaults={"device_id": socket.gethostname(), "state_dir": _default_state_dir()})
    summary = Daemon(cfg, path, overrides, once=args.once, max_frames=args.max_frames).run()
    print(json.dumps(summary) if args.json else
          f"{summary['frames']} frames in {summary['seconds']} s ({summary['fps']} frames/s), "
          f"{summary['dropped']} dropped, {summary['acknowledged']} messages acknowledged by the broker", flush=True)
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from edge.classify import classify

    failed = classify(args.model, args.images, labels=args.labels, as_json=args.json, top_k=args.top_k,
                      threads=args.threads)
    return 3 if failed else 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from edge.classify import collect

    saved = collect(args.source, args.label, args.out, every=args.every, count=args.count)
    print(f"collected {saved} image(s) of '{args.label}' in {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge.bench import bench

    result = bench(args.model, args.source, frames=args.frames, threads=args.threads, labels=args.labels)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bare invoke loop   {result['bare_fps']:>8.1f} frames/s\n"
              f"full pipeline      {result['pipeline_fps']:>8.1f} frames/s  ({result['ratio']:.1%} of bare)\n"
              f"stage p50 ms       " + ", ".join(f"{k} {v}" for k, v in result["stage_ms_p50"].items()) + "\n"
              f"model loaded after {result['model_loaded_s']} s; max resident memory {result['max_rss_mb']} MB")
    return 0


def _roi(text: str) -> tuple[float, float, float, float]:
    from edge.preprocess import parse_roi

    try:
        return parse_roi(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_monitor(args: argparse.Namespace) -> int:
    from edge.monitor import monitor

    from edge.config import read_password
    from edge.mqtt import Credentials

    password = read_password(args.password_file)
    monitor(args.broker, prefix=args.prefix, protocol=args.protocol, as_json=args.json, count=args.count,
            timeout=args.timeout, summary_every=None if args.json else args.summary_every,
            credentials=Credentials(args.username, password, args.ca_file))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge import artifact, audit

    model = artifact.load(args.model, args.labels)
    info = {"card": model.card, "io": audit.io_details(model), "ops": audit.summary(audit.ops(model))}
    if args.json:
        print(json.dumps(info))
        return 0
    print(json.dumps(model.card, indent=2) if model.card else f"{args.model} has no model card (made elsewhere)")
    for name, d in info["io"].items():
        print(f"{name}: {d['shape']} {d['dtype']}, scale {d['scale']:g}, zero point {d['zero_point']}")
    print("ops:")
    for op in info["ops"]:
        flags = ("float " if op["float"] else "") + ("" if op["edgetpu"] else "not-on-edgetpu")
        print(f"  {op['op']:<22} x{op['count']:<3} in {','.join(op['inputs'])} -> {','.join(op['outputs'])} {flags}")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.simulator import write_dataset

    counts = write_dataset(Path(args.out), args.per_class, args.seed)
    print(f"wrote {sum(counts.values())} images to {args.out}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return run_demo(args.workdir, per_class=args.per_class, epochs=args.epochs, frames=args.frames)


def _edge_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the device daemon: classify frames and publish over MQTT")
    p.add_argument("--config", help="TOML config file (default: /etc/linewatch/linewatch.toml when it exists; "
                                    "see docs/linewatch.example.toml); flags override it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. results.mode=change")
    p.add_argument("--model", help="the .tflite made by 'linewatch convert'")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--source",
                   help="folder, glob, image or video file, rtsp:// or http:// URL, usb:N, /dev/videoN, "
                        "picamera:N, conveyor[:SEED]")
    p.add_argument("--device-id", help="device id in topics (default: host name)")
    p.add_argument("--broker", help="mqtt://HOST:PORT, or mqtts:// for TLS (default: mqtt://127.0.0.1:1883)")
    p.add_argument("--prefix", help="topic prefix (default: linewatch)")
    p.add_argument("--protocol", choices=["5", "3.1.1"], help="MQTT protocol version (default: 5)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-file", help="file holding the MQTT password (or LINEWATCH_MQTT_PASSWORD)")
    p.add_argument("--ca-file", help="CA certificate for mqtts://")
    p.add_argument("--cert-file", help="client certificate for mqtts://")
    p.add_argument("--key-file", help="client key for mqtts://")
    p.add_argument("--state-dir", help="spool and snapshots (default: /var/lib/linewatch or ~/.local/state/linewatch)")
    p.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")
    p.add_argument("--delegate", help="edgetpu, or a delegate library path (an _edgetpu model asks by itself)")
    p.add_argument("--cpu-fallback", action="store_true", help="run on the CPU when the delegate cannot load")
    p.add_argument("--roi", type=_roi, help="region of interest x,y,w,h as fractions of the frame")
    p.add_argument("--rotate", type=int, choices=[0, 90, 180, 270], help="clockwise, after the ROI")
    p.add_argument("--review-dir", help="save low-confidence frames here, by predicted label, for labeling")
    p.add_argument("--review-below", type=float, help="score under which a frame is saved (default: 0.6)")
    p.add_argument("--review-quota-mb", type=float, help="disk quota of the review folder (default: 500)")
    p.add_argument("--fps", type=float, help="pace a folder, file or the conveyor at this frame rate")
    p.add_argument("--loop", action="store_true", help="repeat a folder or video file")
    p.add_argument("--result-mode", choices=["every", "change", "sample"], help="which frames publish a result")
    p.add_argument("--top-k", type=int, help="scores to publish per result (default: 3)")
    p.add_argument("--stats-interval", type=float, help="seconds between stats messages (default: 10)")
    p.add_argument("--ha-discovery", action="store_true", help="announce the device to Home Assistant")
    p.add_argument("--once", action="store_true", help="exit when a finite source ends, after all is published")
    p.add_argument("--max-frames", type=int, help="exit after this many frames")
    p.add_argument("--json", action="store_true", help="print the exit summary as JSON")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("classify", help="classify images or folders of images once, as a table or JSON lines")
    p.add_argument("model", help="a .tflite")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--json", action="store_true", help="one JSON object per line: path, label, score, top")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.set_defaults(handler=_cmd_classify)

    p = sub.add_parser("collect", help="gather training photos from a source into DATASET/LABEL/")
    p.add_argument("--source", required=True, help="as for run")
    p.add_argument("--label", required=True, help="the class of what the camera sees now")
    p.add_argument("-o", "--out", required=True, help="dataset folder")
    p.add_argument("--every", type=float, default=1.0, help="seconds between saved frames")
    p.add_argument("--count", type=int, help="stop after this many photos")
    p.set_defaults(handler=_cmd_collect)

    p = sub.add_parser("bench", help="frames/s of the full pipeline against a bare invoke loop")
    p.add_argument("model", help="a .tflite")
    p.add_argument("--source", required=True, help="as for run; frames are read once and replayed")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--threads", type=int)
    p.add_argument("--labels")
    p.add_argument("--json", action="store_true", help="JSON with pipeline_fps, bare_fps and ratio")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("monitor", help="watch every device on the broker: a line per message")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT, or mqtts:// for TLS")
    p.add_argument("--prefix", default="linewatch", help="topic prefix (default: linewatch)")
    p.add_argument("--protocol", default="5", choices=["5", "3.1.1"], help="MQTT protocol version")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-file", help="file holding the MQTT password (or LINEWATCH_MQTT_PASSWORD)")
    p.add_argument("--ca-file", help="CA certificate for mqtts://")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, help="exit after this many result messages")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.add_argument("--summary-every", type=float, default=10.0,
                   help="seconds between per-device tables: status, last label, defect rate, frames/s, gaps")
    p.set_defaults(handler=_cmd_monitor)

    p = sub.add_parser("inspect", help="print a .tflite's model card, ops and input/output quantization")
    p.add_argument("model", help="a .tflite")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser("demo-data", help="render the synthetic factory line as a folder-per-class dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=300, help="images per class (default: 300)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_demo_data)

    p = sub.add_parser("demo", help="the whole path on this machine: data, train, convert, broker, daemon, subscriber")
    p.add_argument("--workdir", default="build/demo", help="where artifacts land (default: build/demo)")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--frames", type=int, default=400, help="conveyor frames for the daemon")
    p.set_defaults(handler=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linewatch", description="Defect classification on a factory line: train, convert, run on a Pi.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"linewatch {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _edge_commands(sub)
    for name in WORKSTATION_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a device install without the workstation packages
            continue
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return args.handler(args)
    except LinewatchError as exc:
        print(f"linewatch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
