"""Write the documents that are generated from the code, or check that they are up to date.

    python docs/generate.py           # make docs: rewrite them
    python docs/generate.py --check   # the tests: exit 1 and name each stale file

Sources: the MQTT payload models (docs/schemas/*.json), the daemon's settings model
(docs/configuration.md), the exit-code table (docs/exit-codes.md) and the last ``make bench`` run
recorded in benchmarks/results.md (the README's figures; other runs' tables stay in their documents,
and a README block named after one of them is filled from it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from linewatch.edge import options
from linewatch.edge.comms.payloads import TOPIC_PAYLOADS, Payload, json_schema
from linewatch.edge.device.config import RUN_DEFAULTS, Config, env_name
from linewatch.edge.device.plc.handshake import address_text, plc_map
from linewatch.edge.errors import exit_code_table
from linewatch.edge.station.inbox import InboxSample

ROOT = Path(__file__).resolve().parents[1]
# Tables a long run records in its own document, copied into the README: `make soak`, `make bench-train`, `make bench`.
RECORDED = {"soak": ROOT / "docs" / "reliability.md", "bench-train": ROOT / "docs" / "training.md",
            "bench": ROOT / "benchmarks" / "results.md", "bench-headline": ROOT / "benchmarks" / "results.md",
            "bench-anomaly": ROOT / "docs" / "anomaly.md",
            "setup-page": ROOT / "docs" / "http.md", "line-demo": ROOT / "docs" / "line-io.md"}


def recorded_block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:begin -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def schemas() -> dict[Path, str]:
    """The MQTT payloads', and the station API's sample (docs/station.md)."""
    models: dict[str, type[Payload]] = {**TOPIC_PAYLOADS, "station-sample": InboxSample}
    return {ROOT / "docs" / "schemas" / f"{name}.schema.json": json.dumps(json_schema(model, name), indent=2) + "\n"
            for name, model in models.items()}


def configuration() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from edge/device/config.py by docs/generate.py: edit the model, then run `make docs`. -->",
        "",
        "`linewatch run` reads one TOML file (`--config`, default `/etc/linewatch/linewatch.toml`).",
        "Every key can also be set by its environment variable and by `--set KEY=VALUE`; many have a flag.",
        "Precedence, lowest first: the file, the environment, flags and `--set`. Unknown keys and bad values",
        "stop the start with one line naming the key (exit 2). The MQTT password itself is read from",
        "`LINEWATCH_MQTT_PASSWORD` or the `mqtt.password_file`, never from the file or a flag. An example",
        "file, the one `linewatch install` puts in place: [systemd/linewatch.toml](../systemd/linewatch.toml).",
        "",
        "| key | type | default | flag | environment | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, field in options.settings(Config):
        kind = str(field.annotation).replace("typing.", "").replace("NoneType", "None")
        kind = re.sub(r"<class '(\w+)'>", r"\1", kind).replace("|", "or")
        default = RUN_DEFAULTS[key][0] if key in RUN_DEFAULTS else "required" if field.is_required() else \
            f"`{options.default_text(field)}`" if options.default_text(field) else ""
        flag = f"`{options.flag(field)}`" if options.flag(field) else ""
        lines.append(f"| `{key}` | {kind} | {default} | {flag} | `{env_name(key)}` | {field.description or ''} |")
    return "\n".join(lines) + "\n"


def exit_codes() -> str:
    return ("# Exit codes\n\n"
            "<!-- Generated from edge/errors.py by docs/generate.py: edit EXIT_CODES, then run `make docs`. -->\n\n"
            "Every `linewatch` command exits with one of these. A user's mistake prints one line on\n"
            "stderr, `linewatch COMMAND: error: …`, naming the thing and what to do; never a traceback.\n\n"
            + exit_code_table() + "\n")


def plc_map_table() -> str:
    """docs/plc.md's map, from the points the handshake serves (``linewatch plc-map``)."""
    lines = ["| name | Modbus table | address | type | access | OPC UA, under Objects | meaning |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in plc_map():
        lines.append(f"| `{row['name']}` | {row['table']} | {address_text(row)} | {row['type']} | {row['access']} | "
                     f"`{row['opcua_path']}` | {row['meaning']} |")
    return "\n".join(lines) + "\n"


def plc(current: str) -> str:
    return recorded_block("plc-map").sub(lambda m: m.group(1) + plc_map_table() + m.group(3), current)


def readme(current: str) -> str:
    """The recorded tables as their documents have them."""
    for name, source in RECORDED.items():
        found = recorded_block(name).search(source.read_text())
        table = found.group(2) if found else ""
        current = recorded_block(name).sub(lambda m: m.group(1) + table + m.group(3), current)  # noqa: B023
    return current


def documents() -> dict[Path, str]:
    readme_path, plc_path = ROOT / "README.md", ROOT / "docs" / "plc.md"
    return {**schemas(), ROOT / "docs" / "configuration.md": configuration(),
            ROOT / "docs" / "exit-codes.md": exit_codes(), readme_path: readme(readme_path.read_text()),
            plc_path: plc(plc_path.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when a committed file is not what its source says")
    args = parser.parse_args()
    stale = []
    for path, text in documents().items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run `make docs`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
