"""``make pi-check``: the documented Raspberry Pi install, followed to the letter in emulated arm64 roots.

Raspberry Pi OS bookworm and trixie are Debian bookworm and trixie for arm64 plus Raspberry Pi's
own packages (picamera2 among them, which cannot be had here). For each, this builds a Debian
root with ``mmdebstrap`` (cached under build/pi/), runs it through ``qemu-user`` via binfmt_misc,
installs linewatch as docs/raspberry-pi.md says, and asserts:

- the venv imports the system's numpy, and an apt extension built against it (python3-scipy,
  the closest Debian has to picamera2's simplejpeg) still imports;
- the device test tier passes (``pytest -m "not workstation"``: no TensorFlow there);
- the daemon classifies a folder and every result reaches a mosquitto on the host's loopback;
- and it prints the install's size and the daemon's cold start, emulated (not Pi speed).

qemu comes from Debian trixie's ``qemu-user`` (10.x, static): bookworm's 7.2 crashes inside
LiteRT's ``Interpreter``. Needs root (binfmt_misc, chroot, mounts); without it, it says so and
exits 0 unless ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "pi"
SUITES = ("bookworm", "trixie")
PACKAGES = ["python3", "python3-venv", "python3-pip", "python3-numpy", "python3-scipy", "ca-certificates",
            "mosquitto", "openssl", "mount", "passwd"]
MIRROR = "http://deb.debian.org/debian"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"  # the name mmdebstrap looks for
AARCH64_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess:
    print("$", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], check=True, **kwargs)  # type: ignore[call-overload]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ensure_host_tools() -> None:
    if shutil.which("mmdebstrap") is None:
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", "mmdebstrap")


def trixie_qemu() -> Path:
    """qemu-aarch64 from trixie's qemu-user package (a static binary), extracted into the cache."""
    target = CACHE / "qemu" / "usr" / "bin" / "qemu-aarch64"
    if target.is_file():
        return target
    apt = CACHE / "apt-trixie"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} trixie main\n")
    options = ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
               "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache::Archives={apt / 'archives'}",
               "-o", "APT::Architectures=amd64"]
    run("apt-get", *options, "update", "-qq")
    with tempfile.TemporaryDirectory() as tmp:
        run("apt-get", *options, "download", "qemu-user", cwd=tmp)
        deb = next(Path(tmp).glob("qemu-user_*.deb"))
        run("dpkg-deb", "-x", deb, CACHE / "qemu")
    return target


def register_binfmt(qemu: Path) -> None:
    """arm64 ELF files run through ``qemu`` (F: the kernel keeps it open, so it works inside chroots)."""
    if not (BINFMT / "register").exists():
        run("mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT)
    entry = BINFMT / BINFMT_NAME
    if entry.exists():
        entry.write_text("-1")  # re-register: the binary may have been re-extracted
    (BINFMT / "register").write_text(f":{BINFMT_NAME}:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{qemu}:F\n")


class Unavailable(Exception):
    """What the check needs from outside (Debian's mirror, root) is not there: not a linewatch failure."""


def build_root(suite: str) -> Path:
    """The cached root, built afresh when it is missing or was built with other packages."""
    root = CACHE / suite
    stamp = root / ".linewatch-root"
    if stamp.is_file() and stamp.read_text() == ",".join(PACKAGES):
        return root
    if root.exists():
        shutil.rmtree(root)
    try:
        run("mmdebstrap", "--mode=root", "--arch=arm64", "--variant=apt", f"--include={','.join(PACKAGES)}",
            suite, root, MIRROR)
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"mmdebstrap could not build the {suite} root (exit {exc.returncode}): is {MIRROR} "
                          "reachable?") from None
    stamp.write_text(",".join(PACKAGES))
    return root


class Chroot:
    """The root with /proc, /sys, /dev and the host's DNS, for as long as it is used."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounts: list[Path] = []

    def __enter__(self) -> Chroot:
        for name, kind in (("proc", ["-t", "proc", "proc"]), ("sys", ["--rbind", "/sys"]),
                           ("dev", ["--rbind", "/dev"])):
            target = self.root / name
            run("mount", *kind, target)
            self.mounts.append(target)
        shutil.copy("/etc/resolv.conf", self.root / "etc" / "resolv.conf")
        # The host's CA bundle: it may trust a proxy's CA that Debian's own bundle does not.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", self.root / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        return self

    def __exit__(self, *exc: object) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)

    def sh(self, script: str, capture: bool = False) -> str:
        proc = run("chroot", self.root, "/bin/sh", "-ec", script, capture_output=capture, text=True)
        return proc.stdout if capture else ""


def check(suite: str, wheel: Path, tiny: Path, broker_url: str) -> dict[str, object]:
    step(f"{suite}: an arm64 Debian root")
    root = build_root(suite)
    src = root / "opt" / "src"
    if src.exists():
        shutil.rmtree(src)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():  # the tests read the repository too (docs, the architecture table)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copy(wheel, src / wheel.name)
    with Chroot(root) as chroot:
        step(f"{suite}: install as docs/raspberry-pi.md says (the wheel stands for PyPI)")
        started = time.monotonic()
        chroot.sh("rm -rf /opt/linewatch && python3 -m venv --system-site-packages /opt/linewatch\n"
                  "python3 -c 'import numpy; print(\"numpy==\" + numpy.__version__)' > /tmp/system-numpy.txt\n"
                  f"/opt/linewatch/bin/pip install -q -c /tmp/system-numpy.txt '/opt/src/{wheel.name}[edge,test]'\n"
                  f"/opt/linewatch/bin/linewatch install --model /opt/src/tests/fixtures/{tiny.name} "
                  f"--device-id pi-{suite} --broker {broker_url} --source /tmp/photos")
        install_s = time.monotonic() - started
        unit = (root / "etc/systemd/system/linewatch.service").read_text()
        assert "ExecStart=/opt/linewatch/bin/linewatch run" in unit and "Type=notify" in unit
        assert (root / "var/lib/linewatch/model.tflite").read_bytes() == tiny.read_bytes()
        step(f"{suite}: the system's numpy, and an extension built against it")
        numpy = chroot.sh("/opt/linewatch/bin/python -c 'import numpy, scipy.ndimage, cv2; "
                          "assert numpy.__file__.startswith(\"/usr/lib/python3/dist-packages\"), numpy.__file__; "
                          "print(numpy.__version__, cv2.__version__)'", capture=True).split()
        step(f"{suite}: the daemon on a folder, to a mosquitto on the host's loopback")
        out = chroot.sh("cd /tmp && /opt/linewatch/bin/linewatch demo-data /tmp/photos --per-class 4 >/dev/null\n"
                        f"/opt/linewatch/bin/linewatch run --model /opt/src/tests/fixtures/{tiny.name} "
                        f"--source /tmp/photos --broker {broker_url} --device-id pi-{suite} "
                        "--state-dir /tmp/state --once --json", capture=True)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["frames"] == 20 and summary["acknowledged"] >= 20, summary
        size = chroot.sh("du -sm /opt/linewatch | cut -f1", capture=True).strip()
        started = time.monotonic()  # cold start: process start, imports, model, first frame, exit
        chroot.sh(f"/opt/linewatch/bin/linewatch run --model /opt/src/tests/fixtures/{tiny.name} "
                  f"--source /tmp/photos --broker {broker_url} --device-id pi-{suite} --state-dir /tmp/state "
                  "--max-frames 1 >/dev/null")
        one_frame_s = time.monotonic() - started
        step(f"{suite}: the device test tier")
        chroot.sh("cd /opt/src && /opt/linewatch/bin/python -m pytest -q -m 'not workstation' "
                  "-p no:cacheprovider --timeout 900 tests")
    return {"suite": suite, "numpy": numpy[0], "opencv": numpy[1], "install_mb": int(size),
            "install_s_emulated": round(install_s), "one_frame_run_s_emulated": round(one_frame_s, 1),
            "folder_fps_emulated": summary["fps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="append", choices=SUITES, help="bookworm, trixie (default: both)")
    parser.add_argument("--strict", action="store_true", help="fail where the check cannot run (no root)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pi-check: needs root (binfmt_misc, chroot, mounts): skipped", file=sys.stderr)
        return 1 if args.strict else 0
    sys.path.insert(0, str(ROOT))
    from linewatch.edge.demo.brokers import MosquittoBroker

    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        ensure_host_tools()
        register_binfmt(trixie_qemu())
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"pi-check: cannot set up arm64 emulation ({exc}): skipped", file=sys.stderr)
        return 1 if args.strict else 0
    with tempfile.TemporaryDirectory() as tmp:
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, ROOT)
        wheel = next(Path(tmp).glob("linewatch-*.whl"))
        broker = MosquittoBroker(workdir=Path(tmp) / "mosquitto")
        broker.start()
        try:
            results = [check(suite, wheel, ROOT / "tests" / "fixtures" / "tiny.tflite", broker.url)
                       for suite in args.suite or SUITES]
        except Unavailable as exc:
            print(f"pi-check: {exc}: skipped", file=sys.stderr)
            return 1 if args.strict else 0
        finally:
            broker.stop()
    print("\npi-check (arm64 under qemu: sizes are real, times are emulated, not Pi speed)")
    for r in results:
        print("  " + ", ".join(f"{k} {v}" for k, v in r.items()))
    print(f"  took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
