"""Node.js packages for the tests (Node-RED, Eclipse Tahu's Sparkplug decoder), as `make node-red` installs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "build" / "node"


def node_modules() -> Path:
    """build/node/node_modules, or skip saying why it is missing (npm or its registry could not be reached)."""
    modules = NODE_DIR / "node_modules"
    if shutil.which("node") is None or not (modules / ".installed").is_file():
        log = NODE_DIR / "npm-error.log"
        why = log.read_text().strip().splitlines()[-1:] if log.is_file() else ["run `make node-red`"]
        pytest.skip(f"Node-RED and the Sparkplug decoder are not installed ({'; '.join(why) or 'npm failed'})")
    return modules


def tahu_decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Sparkplug B payloads decoded by Eclipse Tahu's own JavaScript library (sparkplug-payload), as JSON."""
    script = ("const sp = require('sparkplug-payload').get('spBv1.0');"
              "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "const long = v => (v && typeof v === 'object' && 'low' in v) ? v.low + v.high * 4294967296 : v;"
              "console.log(JSON.stringify(input.map(h => { const p = sp.decodePayload(Buffer.from(h, 'hex'));"
              "  return {seq: long(p.seq), timestamp: long(p.timestamp), metrics: p.metrics.map(m => ({"
              "    name: m.name, type: m.type, value: long(m.value)}))}; })));")
    proc = subprocess.run(["node", "-e", script], input=json.dumps([p.hex() for p in payloads]), text=True,
                          capture_output=True, cwd=node_modules().parent, check=True, timeout=60)
    decoded: list[dict[str, Any]] = json.loads(proc.stdout)
    return decoded


def tahu_encode(metrics: list[dict[str, Any]]) -> bytes:
    """A payload encoded by Tahu's library (an NCMD as Ignition would send it)."""
    script = ("const sp = require('sparkplug-payload').get('spBv1.0');"
              "const metrics = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(Buffer.from(sp.encodePayload({timestamp: Date.now(), metrics})).toString('hex'));")
    proc = subprocess.run(["node", "-e", script], input=json.dumps(metrics), text=True, capture_output=True,
                          cwd=node_modules().parent, check=True, timeout=60)
    return bytes.fromhex(proc.stdout)
