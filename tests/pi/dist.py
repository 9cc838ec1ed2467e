"""``make dist``: linewatch for a Raspberry Pi that has no network, as one archive and its sha256.

Raspberry Pi OS gives numpy and picamera2 from apt (the venv sees them through
``--system-site-packages``). Everything else ``linewatch[edge]`` needs comes here as aarch64 wheels,
for the Python of each Raspberry Pi OS release (bookworm 3.11, trixie 3.13), resolved against that
release's apt numpy just as the online install is (docs/raspberry-pi.md). On the Pi::

    sha256sum -c linewatch-VERSION-pi.tar.gz.sha256 && tar xzf linewatch-VERSION-pi.tar.gz
    pip install --no-index --find-links linewatch-VERSION-pi/wheels -c /tmp/system-numpy.txt 'linewatch[edge]'

``make pi-check`` builds the same archive (``--extras edge,test``: the device tier runs there too) and installs
it in emulated arm64 roots with the network cut. Kept beside that check, which is its test.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]


class Release(NamedTuple):
    """What a Raspberry Pi OS release brings: its Python, its apt numpy, its glibc (the newest manylinux it runs)."""

    python: str
    numpy: str
    glibc: tuple[int, int]


RELEASES = {"bookworm": Release("3.11", "1.24.2", (2, 36)), "trixie": Release("3.13", "2.2.4", (2, 41))}


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _platforms(glibc: tuple[int, int]) -> list[str]:
    """Every manylinux tag an aarch64 system with this glibc runs, as ``pip download --platform`` wants them."""
    tags = ["manylinux2014_aarch64"] + [f"manylinux_2_{minor}_aarch64" for minor in range(17, glibc[1] + 1)]
    return [arg for tag in tags for arg in ("--platform", tag)]


def _pip(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", *map(str, args)], check=True)


def build(out: Path, extras: str = "edge") -> Path:
    """The archive ``out/linewatch-VERSION-pi.tar.gz`` (and its ``.sha256``); returns its path."""
    name = f"linewatch-{version()}-pi"
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT)
    wheel = next(wheels.glob("linewatch-*.whl"))
    for suite, release in RELEASES.items():
        print(f"{name}: the wheels for {suite} (Python {release.python}, numpy {release.numpy} from apt)", flush=True)
        constraints = folder / f"constraints-{suite}.txt"
        constraints.write_text(f"numpy=={release.numpy}\n")
        _pip("download", "-q", "--dest", wheels, "--only-binary=:all:", "--implementation", "cp", "--python-version",
             release.python, *_platforms(release.glibc), "-c", constraints, f"linewatch[{extras}] @ {wheel.as_uri()}")
    archive = out / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (out / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    count = len(list(wheels.glob("*.whl")))
    print(f"wrote {archive} ({archive.stat().st_size / 2**20:.1f} MB, {count} wheels) and {archive.name}.sha256")
    return archive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default=str(ROOT / "dist"), help="folder for the archive (default: dist/)")
    parser.add_argument("--extras", default="edge", help="linewatch's extras to bring wheels for (default: edge)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build(out, args.extras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
