"""The ``linewatch`` command. Imports are lazy so ``--help`` answers at once, even beside TensorFlow.

Each package adds its own subcommands: ``edge`` the device ones, ``train`` and ``convert``
the workstation ones when they are installed (the device has no TensorFlow). The options of
``run``, ``train`` and ``convert`` are generated from their settings models (``options``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linewatch.edge import __version__, options
from linewatch.edge.errors import INTERRUPTED, LinewatchError, UsageError, exit_code_epilog

WORKSTATION_COMMANDS = ("linewatch.train.cli", "linewatch.convert.cli")


def _config_args(args: argparse.Namespace) -> tuple[Path | None, dict[str, Any]]:
    """The config file and the overrides that ``run`` and ``check`` were given (flags and ``--set``)."""
    from linewatch.edge.device import config

    overrides = options.given(args, config.Config)
    secret = config.keys_marked(config.SECRET)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item}: use KEY=VALUE, e.g. --set results.mode=change")
        if key.strip() in secret:
            raise UsageError(f"--set {key.strip()}: a secret never goes on the command line, where every user sees "
                             f"it: put it in the config file or {config.env_name(key.strip())}")
        overrides[key.strip()] = value
    path = Path(args.config) if args.config else (config.DEFAULT_PATH if config.DEFAULT_PATH.is_file() else None)
    return path, overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from linewatch.edge.device import config
    from linewatch.edge.device.daemon import Daemon

    path, overrides = _config_args(args)
    cfg = config.load_run(path, overrides)
    summary = Daemon(cfg, path, overrides, once=args.once, max_frames=args.max_frames).run()
    print(json.dumps(summary) if args.json else
          f"{summary['frames']} frames in {summary['seconds']} s ({summary['fps']} frames/s), "
          f"{summary['dropped']} dropped, {summary['acknowledged']} messages acknowledged by the broker", flush=True)
    return INTERRUPTED if summary["interrupted"] else 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from linewatch.edge.tools.classify import ReviewPicks, classify

    if args.review_count < 1:
        raise UsageError(f"--review-count {args.review_count}: keep at least 1 image")
    review = ReviewPicks(Path(args.review_dir), args.review_count) if args.review_dir else None
    failed = classify(args.model, args.images, labels=args.labels, as_json=args.json, top_k=args.top_k,
                      threads=args.threads, review=review)
    return 3 if failed else 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from linewatch.edge.tools.classify import collect

    saved = collect(args.source, args.label, args.out, every=args.every, count=args.count)
    print(f"collected {saved} image(s) of '{args.label}' in {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from linewatch.edge.tools.bench import bench

    result = bench(args.model, args.source, frames=args.frames, threads=args.threads, labels=args.labels,
                   seconds=args.seconds, shadow=args.shadow, plc=args.plc)
    if args.json:
        print(json.dumps(result))
    else:
        cpu = result["cpu_us_per_frame"]
        print(f"bare invoke loop   {result['bare_fps']:>8.1f} frames/s\n"
              f"full pipeline      {result['pipeline_fps']:>8.1f} frames/s  ({result['ratio']:.1%} of bare, "
              f"{result['cores_busy']:.0%} of the cores busy)\n"
              f"CPU per frame      bare {cpu['bare']} us, pipeline {cpu['pipeline']} us: {cpu['outside_invoke']} us "
              f"outside invoke ({cpu['outside_share_of_invoke']:.0%} of invoke)\n"
              f"stage p50 ms       " + ", ".join(f"{k} {v}" for k, v in result["stage_ms_p50"].items()) + "\n"
              f"model loaded after {result['model_loaded_s']} s; max resident memory {result['max_rss_mb']} MB")
        if "shadow" in result:
            shadow = result["shadow"]
            print(f"with a shadow      {shadow['pipeline_fps']:>8.1f} frames/s  ({shadow['ratio']:.1%} of bare); the "
                  f"candidate ({shadow['candidate_threads']} thread) saw one frame in {shadow['candidate_every']:g}, "
                  f"{shadow['cpu_percent']['candidate']}% of a core, invoke {shadow['latency_ms']['candidate']} ms")
        if "plc" in result:
            plc = result["plc"]
            print(f"PLC polling        {plc['ratio_polled']:.1%} of bare polled, {plc['ratio_alone']:.1%} alone "
                  f"({plc['change']:+.1%}); Modbus {plc['polls_per_s']['modbus']:g} and OPC UA "
                  f"{plc['polls_per_s']['opcua']:g} reads/s")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from linewatch.edge.comms.mqtt import Credentials
    from linewatch.edge.device.config import read_password
    from linewatch.edge.tools.monitor import monitor

    password = read_password(args.password_file)
    monitor(args.broker, prefix=args.prefix, protocol=args.protocol, as_json=args.json, count=args.count,
            timeout=args.timeout, summary_every=None if args.json else args.summary_every,
            credentials=Credentials(args.username, password, args.ca_file))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from linewatch.edge.tools.inspect import inspect

    inspect(args.model, args.labels, as_json=args.json)
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from linewatch.edge.model import signing

    private, public = Path(args.out), Path(args.out + ".pub")
    if private.exists() and not args.force:
        raise UsageError(f"{private} exists: keep it, or pass --force to replace it (models signed with it will "
                         "no longer verify on devices that get the new public key)")
    signing.generate(private, public)
    print(f"wrote {private} (private: keep it off the devices) and {public} (for ota.public_key on each device)")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from linewatch.edge.files import write_atomic
    from linewatch.edge.model import artifact, signing
    from linewatch.edge.model.engine import Engine

    model = Path(args.model)
    Engine(artifact.load(model), num_threads=1)  # sign only what a device would load and run
    signature = model.with_name(model.name + ".sig")
    write_atomic(signature, signing.sign(model.read_bytes(), signing.load_private(Path(args.key))))
    print(f"wrote {signature}: 'linewatch deploy {model}' sends it along")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from linewatch.edge.comms.mqtt import Credentials
    from linewatch.edge.device.config import read_password
    from linewatch.edge.errors import GateError, ModelError
    from linewatch.edge.tools.deploy import Rules, deploy, end_shadow, online, watch_shadow

    if bool(args.device) == args.all:
        raise UsageError("name the devices with --device-id ID (repeatable), or pass --all for every device online")
    devices = None if args.all else args.device
    reach = {"prefix": args.prefix, "protocol": args.protocol, "timeout": args.timeout,
             "credentials": Credentials(args.username, read_password(args.password_file), args.ca_file)}
    if args.promote or args.abort:
        if args.model or args.shadow or args.auto or (args.promote and args.abort):
            raise UsageError("--promote or --abort ends the shadow that runs: no MODEL, --shadow or --auto with it")
        ended = end_shadow(args.broker, devices, "promote" if args.promote else "abort", args.reason, **reach)
        _refused(ended, ModelError)
        return 0
    if not args.model:
        raise UsageError("name the MODEL to deploy (or --promote or --abort the candidate in shadow)")
    if args.auto and not args.shadow:
        raise UsageError("--auto decides on a candidate in shadow: add --shadow")
    if (args.then or args.then_all) and not args.auto:
        raise UsageError("--then and --then-all follow a promotion by --auto: add --shadow --auto")
    results = deploy(args.model, args.broker, devices, shadow=args.shadow, **reach)
    _refused(results, ModelError)
    if not args.auto:
        return 0
    station = None
    if args.labelled_from:
        from linewatch.edge.station.app import TOKEN_ENV
        from linewatch.edge.station.client import StationClient

        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise UsageError(f"--labelled-from needs the station's token in {TOKEN_ENV} (never on the command line)")
        station = StationClient(args.labelled_from, token)
        if not station.answers():
            raise UsageError(f"--labelled-from {args.labelled_from}: the station does not answer, or refuses the "
                             f"token in {TOKEN_ENV}")
    rules = Rules(args.min_frames, args.min_agreement, args.max_defect_rate_change,
                  args.min_labelled if station else 0, args.min_labelled_accuracy)
    verdicts = {device: watch_shadow(args.broker, device, rules, prefix=args.prefix, protocol=args.protocol,
                                     credentials=reach["credentials"], timeout=args.auto_timeout, station=station)
                for device in results}
    if args.json:
        print(json.dumps(verdicts))
    aborted = {device: v["reason"] for device, v in verdicts.items() if not v["promoted"]}
    if aborted:
        raise GateError("; ".join(f"{device}: {reason}" for device, reason in aborted.items()))
    if args.then or args.then_all:  # never the promoted devices again: their previous model is their rollback
        named = online(args.broker, args.prefix, args.protocol, reach["credentials"]) if args.then_all else args.then
        then = [device for device in named if device not in results]
        if then:
            _refused(deploy(args.model, args.broker, then, **reach), ModelError)
    return 0


def _refused(replies: dict[str, dict[str, Any]], error: type[LinewatchError]) -> None:
    """Raise ``error`` naming every device that refused."""
    refused = {device: reply.get("error") for device, reply in replies.items() if not reply.get("ok")}
    if refused:
        raise error("; ".join(f"{device} refused it: {why}" for device, why in refused.items()))


def _cmd_install(args: argparse.Namespace) -> int:
    from linewatch.edge.device.config import read_password
    from linewatch.edge.tools.install import install, still_example

    settings = {key: value for key, value in (("device_id", args.device_id), ("mqtt.broker", args.broker),
                                              ("mqtt.username", args.username), ("source.spec", args.source))
                if value}
    password = read_password(args.password_file, environ={}) if args.password_file else \
        _prompt_password() if args.password_prompt else None
    root = Path(args.root)
    outcome = install(root, Path(args.venv) if args.venv else None, args.user,
                      Path(args.model) if args.model else None, settings, start=not args.no_start,
                      ca_file=Path(args.ca_file) if args.ca_file else None, password=password)
    for line in outcome.done:
        print(line)
    config_path = root / "etc/linewatch/linewatch.toml"
    report = outcome.report
    for warning in report.warnings:
        print(f"note: {warning}")
    problems = report.errors + (still_example(config_path) if report.exit_code else [])
    if problems:
        print(f"not started: {config_path} does not pass the daemon's own check. To fix:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print("then run install again with the missing flags (--broker, --ca-file, --password-file or "
              "--password-prompt), or edit the file, and: linewatch check --config /etc/linewatch/linewatch.toml && "
              "systemctl enable --now linewatch", file=sys.stderr)
        return report.exit_code
    print(f"configuration: {config_path} checked as the daemon reads it"
          + ("" if outcome.started else "; not started (--no-start, --root, or no systemctl here)"))
    return 0


def _prompt_password() -> str:
    """The MQTT password, typed (not echoed) or piped in: never on the command line."""
    import getpass

    secret = getpass.getpass("MQTT password: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not secret:
        raise UsageError("--password-prompt: no password was given")
    return secret


def _cmd_check(args: argparse.Namespace) -> int:
    from linewatch.edge.tools.check import check

    path, overrides = _config_args(args)
    report = check(path, overrides, probe_s=None if args.no_probe else args.timeout)
    for warning in report.warnings:
        print(f"linewatch check: {warning}")
    for error in report.errors:
        print(f"linewatch check: error: {error}", file=sys.stderr)
    if not report.exit_code and report.config is not None:
        print(f"linewatch check: {path or 'the defaults'}: the daemon would start as device "
              f"{report.config.device_id} with {report.config.model.path}")
    return report.exit_code


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from linewatch.edge.tools.install import uninstall

    for line in uninstall(Path(args.root), purge=args.purge):
        print(line)
    return 0


def _broker_options(p: argparse.ArgumentParser) -> None:
    """How a tool reaches the plant's broker, as ``monitor`` and ``deploy`` share it."""
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT, or mqtts:// for TLS")
    p.add_argument("--prefix", default="linewatch", help="topic prefix (default: linewatch)")
    p.add_argument("--protocol", default="5", choices=["5", "3.1.1"], help="MQTT protocol version")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-file", help="file holding the MQTT password (or LINEWATCH_MQTT_PASSWORD)")
    p.add_argument("--ca-file", help="CA certificate for mqtts://")


def _cmd_station(args: argparse.Namespace) -> int:
    from linewatch.edge.comms.mqtt import Credentials
    from linewatch.edge.device.config import read_password
    from linewatch.edge.station.app import Station, StationOptions

    if args.per_hour <= 0 or args.max_inbox < 1:
        raise UsageError("--per-hour and --max-inbox must be above 0")
    station = Station(StationOptions(
        broker=args.broker, data=Path(args.data), http=args.http, prefix=args.prefix, protocol=args.protocol,
        credentials=Credentials(args.username, read_password(args.password_file), args.ca_file),
        devices=set(args.device) if args.device else None, per_hour=args.per_hour, max_inbox=args.max_inbox,
        token_file=args.token_file, cert_file=args.cert_file, key_file=args.key_file))
    print(f"station: samples into {station.inbox.folder}; labelling page at {station.url}", flush=True)
    station.run()
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from linewatch.edge.simulator import write_dataset

    counts = write_dataset(Path(args.out), args.per_class, args.seed)
    print(f"wrote {sum(counts.values())} images to {args.out}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from linewatch.edge.demo.demo import run_demo, train_demo_model

    if args.learn:
        from linewatch.edge.demo.learn import run_learn_demo

        summary = run_learn_demo(args.workdir, broker_url=args.broker, summary_path=args.summary,
                                 per_class=args.per_class, epochs=args.epochs, budget=args.labels)
        return 0 if summary["promotion"]["promoted"] else 1
    if not args.line:
        return run_demo(args.workdir, per_class=args.per_class, epochs=args.epochs, frames=args.frames)
    from linewatch.edge.demo.line import run_line_demo

    model = args.model or Path(args.workdir) / "model.tflite"
    if not args.model and not Path(model).is_file():
        train_demo_model(Path(args.workdir), args.per_class, args.epochs)
    summary = run_line_demo(str(model), parts=args.parts, rate=args.rate, reject_delay_ms=args.reject_delay_ms,
                            broker_url=args.broker, workdir=str(Path(args.workdir) / "line"),
                            summary_path=args.summary, stall_ms=args.stall_ms, camera_loss_s=args.camera_loss_s,
                            plc=args.plc)
    plc_ok = "plc" not in summary or (summary["plc"]["same_verdicts_as_part_messages"] and not summary["plc"]["errors"])
    return 0 if summary["one_message_per_part"] and not summary["not_good_but_passed"] and plc_ok else 1


def _cmd_plc_map(args: argparse.Namespace) -> int:
    from linewatch.edge.device.plc.handshake import map_text, plc_map

    print(json.dumps(plc_map(), indent=2) if args.json else map_text())
    return 0


def _edge_commands(sub: argparse._SubParsersAction) -> None:
    from linewatch.edge.device.config import Config

    p = sub.add_parser("run", help="the device daemon: classify frames and publish over MQTT")
    p.add_argument("--config", help="TOML config file (default: /etc/linewatch/linewatch.toml when it exists; "
                                    "see docs/configuration.md); flags override it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. results.mode=change")
    options.add_options(p, Config)
    p.add_argument("--once", action="store_true", help="exit when a finite source ends, after all is published")
    p.add_argument("--max-frames", type=int, help="exit after this many frames")
    p.add_argument("--json", action="store_true", help="print the exit summary as JSON")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("classify", help="classify images, folders of images or video files once, as a table or "
                                        "JSON lines")
    p.add_argument("model", help="a .tflite")
    p.add_argument("images", nargs="+", help="image files, folders or video files (each frame, as FILE#N)")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--json", action="store_true", help="one JSON object per line: path, label, score, top (and an "
                                                        "anomaly model's anomaly_score, anomalous)")
    p.add_argument("--top-k", type=int, default=3, help="scores to show per image")
    p.add_argument("--threads", type=int, help="interpreter threads (default: one a core, less one on 3 or more)")
    p.add_argument("--review-dir", help="keep the images most worth labelling here, in a folder per label: the "
                                        "most anomalous, or the classifier's least sure")
    p.add_argument("--review-count", type=int, default=20, help="how many --review-dir keeps")
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
    p.add_argument("--frames", type=int, default=300, help="distinct frames read from the source")
    p.add_argument("--seconds", type=float, default=0.5, help="each loop replays the frames for at least this long")
    p.add_argument("--threads", type=int, help="interpreter threads (default: one a core, less one on 3 or more)")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--shadow", help="a candidate .tflite run beside, as 'deploy --shadow' runs it; leave it a core "
                                    "with --threads")
    p.add_argument("--plc", action="store_true", help="the pipeline again beside the Modbus and OPC UA servers, "
                                                      "each polled 100 times a second from another process")
    p.add_argument("--json", action="store_true", help="JSON with pipeline_fps, bare_fps and ratio")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("monitor", help="watch every device on the broker: a line per message")
    _broker_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, help="exit after this many result messages")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.add_argument("--summary-every", type=float, default=10.0,
                   help="seconds between per-device tables: status, last label, defect rate, frames/s, gaps")
    p.set_defaults(handler=_cmd_monitor)

    p = sub.add_parser("station", help="receive the devices' samples into DATA/_inbox and serve the page that labels "
                                       "them into DATA/<label>/ (docs/station.md)")
    _broker_options(p)
    p.add_argument("--data", required=True, help="the dataset's folder, as 'linewatch train' reads it")
    p.add_argument("--http", default="127.0.0.1:8090", help="serve the labelling page at HOST:PORT")
    p.add_argument("--token-file", help="file holding the page's token (or LINEWATCH_STATION_TOKEN; else one is made "
                                        "and kept in DATA/_inbox/http-token)")
    p.add_argument("--cert-file", help="TLS certificate (PEM) for https")
    p.add_argument("--key-file", help="its private key")
    p.add_argument("--device", action="append", help="take samples from this device id only (repeatable; default: "
                                                     "any device that announced its status)")
    p.add_argument("--per-hour", type=float, default=3600.0, help="samples a device may send an hour (a tenth at "
                                                                  "once); the rest wait on the device")
    p.add_argument("--max-inbox", type=int, default=5000, help="photos waiting for a label, at most; then the oldest "
                                                               "go, counted")
    p.set_defaults(handler=_cmd_station)

    p = sub.add_parser("inspect", help="print a .tflite's model card, ops and input/output quantization")
    p.add_argument("model", help="a .tflite")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--json", action="store_true", help="one JSON object: card, io, ops")
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser("plc-map", help="every point of the PLC's handshake: Modbus table and address, type, access "
                                       "and meaning (docs/plc.md)")
    p.add_argument("--json", action="store_true", help="a JSON list, one object a point")
    p.set_defaults(handler=_cmd_plc_map)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair to sign models with (KEY and KEY.pub)")
    p.add_argument("-o", "--out", required=True, help="the private key file; the public key goes to OUT.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(handler=_cmd_keygen)

    p = sub.add_parser("sign", help="sign a .tflite for devices that accept signed models only (writes MODEL.sig)")
    p.add_argument("model", help="a .tflite made by 'linewatch convert'")
    p.add_argument("--key", required=True, help="the private key from 'linewatch keygen'")
    p.set_defaults(handler=_cmd_sign)

    p = sub.add_parser("deploy", help="send a .tflite to devices over MQTT; each checks it, swaps it in (or runs it in "
                                      "shadow) and replies")
    p.add_argument("model", nargs="?", help="a .tflite made by 'linewatch convert' (MODEL.sig is sent along when "
                                            "present)")
    p.add_argument("--shadow", action="store_true", help="run it beside the current model on the same frames, acting "
                                                         "on none, until --promote or --abort (docs/fleet.md)")
    p.add_argument("--promote", action="store_true", help="the candidate in shadow becomes the current model")
    p.add_argument("--abort", action="store_true", help="the candidate in shadow is dropped")
    p.add_argument("--reason", help="with --promote or --abort: why, for the devices' shadow message")
    p.add_argument("--auto", action="store_true", help="with --shadow: watch it and promote or abort by the rules "
                                                       "below (exit 5 when aborted)")
    p.add_argument("--min-frames", type=int, default=500, help="with --auto: frames both models classified first")
    p.add_argument("--min-agreement", type=float, default=0.9, help="with --auto: share of frames with the same label")
    p.add_argument("--max-defect-rate-change", type=float, default=0.05,
                   help="with --auto: the most the share of frames called not good may move")
    p.add_argument("--labelled-from", metavar="STATION_URL",
                   help="with --auto: also judge the candidate on the frames where it disagreed, as labelled at this "
                        "station (its token in LINEWATCH_STATION_TOKEN)")
    p.add_argument("--min-labelled", type=int, default=20,
                   help="with --labelled-from: labelled disagreements to wait for")
    p.add_argument("--min-labelled-accuracy", type=float, default=0.9,
                   help="with --labelled-from: the candidate's share right of them (and more than the current's)")
    p.add_argument("--auto-timeout", type=float, default=3600.0, help="with --auto: seconds to wait for --min-frames")
    p.add_argument("--then", action="append", default=[], help="with --auto: after the promotion, deploy the model to "
                                                               "this device too (repeatable)")
    p.add_argument("--then-all", action="store_true", help="with --auto: after the promotion, to every device online")
    p.add_argument("--json", action="store_true", help="with --auto: print the verdicts as JSON")
    p.add_argument("--device-id", "--device", dest="device", action="append",
                   help="a device id (repeat for several); --device is the older name")
    p.add_argument("--all", action="store_true", help="every device whose status is online")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each device's verdict")
    _broker_options(p)
    p.set_defaults(handler=_cmd_deploy)

    p = sub.add_parser("check", help="would the daemon start with this configuration? every problem with its exit "
                                     "code, and whether the broker accepts the credentials")
    p.add_argument("--config", help="TOML config file (default: /etc/linewatch/linewatch.toml when it exists)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, as for run")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker's answer")
    p.add_argument("--no-probe", action="store_true", help="do not connect to the broker")
    p.set_defaults(handler=_cmd_check)

    p = sub.add_parser("install", help="install the service on this Pi (root): user, folders, unit, config; checked, "
                                       "then started")
    p.add_argument("--root", default="/", help="install below this folder instead of / (images, tests)")
    p.add_argument("--venv", help="the venv the service runs (default: the one this linewatch runs from)")
    p.add_argument("--user", default="linewatch", help="the system user the service runs as (created if missing)")
    p.add_argument("--model", help="a .tflite to put in place as /var/lib/linewatch/model.tflite")
    p.add_argument("--device-id", help="the device id (default for a new configuration: the host name)")
    p.add_argument("--broker", help="the broker URL, mqtts://HOST:PORT")
    p.add_argument("--username", help="the MQTT user (default: the device id, as the shipped broker ACL expects)")
    p.add_argument("--ca-file", help="the CA certificate of the broker's, copied to /etc/linewatch/ca.pem")
    p.add_argument("--password-file", help="a file holding the MQTT password, copied to /etc/linewatch/mqtt-password "
                                           "(mode 0600)")
    p.add_argument("--password-prompt", action="store_true", help="ask for the MQTT password (or read it from "
                                                                  "standard input)")
    p.add_argument("--source", help="the frame source, as for run")
    p.add_argument("--no-start", action="store_true", help="enable the service, but do not start it now")
    p.set_defaults(handler=_cmd_install)

    p = sub.add_parser("uninstall", help="stop and remove the service; configuration and data stay")
    p.add_argument("--root", default="/", help="as for install")
    p.add_argument("--purge", action="store_true", help="also remove /etc/linewatch and /var/lib/linewatch")
    p.set_defaults(handler=_cmd_uninstall)

    p = sub.add_parser("demo-data", help="render the synthetic factory line as a folder-per-class dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=300, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="the simulator's seed: another seed, other images")
    p.set_defaults(handler=_cmd_demo_data)

    p = sub.add_parser("demo", help="the whole path on this machine: data, train, convert, broker, daemon, subscriber")
    p.add_argument("--workdir", default="build/demo", help="where artifacts land (default: build/demo)")
    p.add_argument("--per-class", type=int, default=300, help="images per class of the demo's data set")
    p.add_argument("--epochs", type=int, default=30, help="most training epochs")
    p.add_argument("--frames", type=int, default=400, help="conveyor frames for the daemon")
    p.add_argument("--line", action="store_true", help="a line with a photo-eye and a reject gate on simulated "
                                                       "GPIO pins, judged part by part (docs/line-io.md)")
    p.add_argument("--learn", action="store_true", help="the line drifts and learns: samples from three devices to "
                                                        "the station, labelled, RUN2 trained --from RUN1, shadowed "
                                                        "and promoted (docs/station.md)")
    p.add_argument("--labels", type=int, default=150, help="with --learn: the labelling budget")
    p.add_argument("--model", help="with --line: the int8 model (default: the demo's, trained into --workdir "
                                   "when it is not there)")
    p.add_argument("--parts", type=int, default=300, help="with --line: parts to send down the line")
    p.add_argument("--rate", type=float, default=5.0, help="with --line: parts a second")
    p.add_argument("--reject-delay-ms", type=float, default=500.0, help="with --line: photo-eye to reject gate")
    p.add_argument("--broker", help="with --line or --learn: publish here (default: a broker of its own)")
    p.add_argument("--summary", help="with --line or --learn: write the summary (JSON) here too")
    p.add_argument("--stall-ms", type=float, default=0.0, help="with --line: delay every inference this long")
    p.add_argument("--camera-loss-s", type=float, default=0.0, help="with --line: blind the camera this long, "
                                                                   "mid-run")
    p.add_argument("--plc", choices=["modbus", "opcua"], help="with --line: the photo-eye is wired to a PLC that "
                                                              "triggers the device through the handshake over this "
                                                              "protocol (docs/plc.md)")
    p.set_defaults(handler=_cmd_demo)


class DefaultsShown(argparse.HelpFormatter):
    """Every option's help says its default, unless it has none to show or says it already (the settings' options
    say theirs from the settings models)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linewatch", description="Defect classification on a factory line: train, convert, run on a Pi.",
        epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"linewatch {__version__}")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--log-level", default="INFO", choices=levels, help="default: INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _edge_commands(sub)
    if importlib.util.find_spec("tensorflow") is not None:  # a device has LiteRT only: no train or convert there
        for name in WORKSTATION_COMMANDS:
            importlib.import_module(name).add_commands(sub)
    for command in sub.choices.values():
        command.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels,  # before or after the command
                             help="default: INFO")
        command.formatter_class = DefaultsShown
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter would hide our progress
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        code: int = args.handler(args)
        return code
    except LinewatchError as exc:
        print(f"linewatch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
