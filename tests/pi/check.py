"""``make pi-check``: the documented Raspberry Pi install, followed to the letter in emulated arm64 roots.

Raspberry Pi OS bookworm and trixie are Debian bookworm and trixie for arm64 plus Raspberry Pi's
own packages (picamera2 among them, which cannot be had here). For each, this builds a Debian
root with ``mmdebstrap`` (cached, see below), runs it through ``qemu-user`` via binfmt_misc,
installs linewatch from ``make dist``'s offline archive as docs/raspberry-pi.md says, in a network
namespace of its own (no network at all: the step fails if it can reach the host), and asserts:

- the venv imports the system's numpy, and an apt extension built against it (python3-bottleneck,
  a small C extension standing for picamera2's simplejpeg, which Debian does not have) still imports;
- the daemon classifies a folder and every result reaches a mosquitto on the host's loopback;
- the device test tier passes (no TensorFlow there): all of it in trixie, the current Raspberry
  Pi OS and the only place it runs on Python 3.13; in bookworm the tests without a broker
  (``unit`` and ``device``: numpy 1.24 from apt, OpenCV, LiteRT): the broker tests, two thirds of
  the tier's emulated time, prove MQTT logic that ``make test`` proves natively and trixie emulated;
- and it prints the install's size and the daemon's cold start, emulated (not Pi speed).

Building a root takes 5-10 minutes emulated (every package's postinst runs through qemu), so the
roots are kept as tarballs in ~/.cache/linewatch/pi across clones and runs, rebuilt when two weeks
old, and unpacked afresh for each run. ``--budget-s`` (CI: what is left of its 90 minutes) leaves
out a root whose check would not fit, and says so.

qemu comes from Debian trixie's ``qemu-user`` (10.x, static): bookworm's 7.2 crashes inside
LiteRT's ``Interpreter``. Needs root (binfmt_misc, chroot, mounts); without it, it says so and
exits 0 unless ``--strict``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "linewatch" / "pi"
WORK = ROOT / "build" / "pi"  # this run's roots, unpacked from the cache
ROOT_MAX_AGE_S = 14 * 86400  # then rebuilt, with Debian's updates
SUITES = ("trixie", "bookworm")  # the current Raspberry Pi OS first: a short budget leaves out bookworm first
TIERS = {"trixie": "not workstation", "bookworm": "not workstation and not broker"}
# Seconds a suite's check takes on the 2-core Intel build machine (2026-11, rounded up), root unpacked: what
# --budget-s plans with, scaled by how much slower the first suite ran than its figure; a root built from nothing
# adds BUILD_S.
EXPECTED_S = {"trixie": 1400, "bookworm": 700}
BUILD_S = 550
PACKAGES = ["python3", "python3-venv", "python3-pip", "python3-numpy", "python3-bottleneck", "ca-certificates",
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
    """mmdebstrap builds the roots; ip(8) brings up an offline namespace's loopback."""
    missing = [package for tool, package in (("mmdebstrap", "mmdebstrap"), ("ip", "iproute2"))
               if shutil.which(tool) is None]
    if missing:
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", *missing)


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


def _tarball(suite: str) -> Path:
    return CACHE / f"{suite}-{hashlib.sha256(','.join(PACKAGES).encode()).hexdigest()[:12]}.tar"


def _usable(tarball: Path) -> bool:
    return tarball.is_file() and time.time() - tarball.stat().st_mtime < ROOT_MAX_AGE_S


def pristine_root(suite: str) -> Path:
    """The suite's root as mmdebstrap made it, a tarball in the cache: built when missing, when the package list
    changed, or when two weeks old."""
    tarball = _tarball(suite)
    if _usable(tarball):
        return tarball
    for old in CACHE.glob(f"{suite}-*.tar"):
        old.unlink()
    partial = tarball.with_name(tarball.name.replace(".tar", ".partial.tar"))
    try:
        run("mmdebstrap", "--mode=root", "--arch=arm64", "--variant=apt", f"--include={','.join(PACKAGES)}",
            suite, partial, MIRROR)
    except subprocess.CalledProcessError as exc:
        partial.unlink(missing_ok=True)
        raise Unavailable(f"mmdebstrap could not build the {suite} root (exit {exc.returncode}): is {MIRROR} "
                          "reachable?") from None
    partial.rename(tarball)
    return tarball


def unmount_under(path: Path) -> None:
    """Lazily unmount whatever is mounted inside ``path``: the chroot's own mounts, or an interrupted run's."""
    inside = {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(f"{path}/")}
    for target in sorted(t for t in inside if not any(t.startswith(f"{o}/") for o in inside)):
        subprocess.run(["umount", "-R", "-l", target], check=False)  # -R: what --rbind brought along


def fresh_root(suite: str) -> Path:
    """A root for this run: the pristine one unpacked into build/pi/, nothing of an earlier run left in it."""
    tarball = pristine_root(suite)
    root = WORK / suite
    if root.exists():
        unmount_under(root)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run("tar", "-xpf", tarball, "--numeric-owner", "-C", root)
    return root


class Chroot:
    """The root with /proc, /sys, /dev and the host's DNS, for as long as it is used."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> Chroot:
        for name, kind in (("proc", ["-t", "proc", "proc"]), ("sys", ["--rbind", "/sys"]),
                           ("dev", ["--rbind", "/dev"])):
            run("mount", *kind, self.root / name)
        shutil.copy("/etc/resolv.conf", self.root / "etc" / "resolv.conf")
        # The host's CA bundle: it may trust a proxy's CA that Debian's own bundle does not.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", self.root / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        return self

    def __exit__(self, *exc: object) -> None:
        unmount_under(self.root)

    def sh(self, script: str, capture: bool = False, offline: bool = False) -> str:
        """Run ``script`` in the root; ``offline``: in a network namespace of its own, with no network but its own
        loopback (up, as on a Pi that has no network: paho needs it for its loop's wake-up socket)."""
        cut = ("unshare", "--net", "/bin/sh", "-ec", 'ip link set lo up && exec "$@"', "offline") if offline else ()
        proc = run(*cut, "chroot", self.root, "/bin/sh", "-ec", script, capture_output=capture, text=True)
        return proc.stdout if capture else ""


def check(suite: str, archive: Path, tiny: Path, broker_url: str) -> dict[str, object]:
    step(f"{suite}: an arm64 Debian root")
    root = fresh_root(suite)
    src = root / "opt" / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():  # the tests read the repository too (docs, the architecture table)
        if name.startswith("linewatch/"):
            continue  # the checkout's links to the folders: the tests here import the installed wheel
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in (archive.name, f"{archive.name}.sha256"):
        shutil.copy(archive.parent / name, src / name)
    folder = archive.name.removesuffix(".tar.gz")
    host, port = urlsplit(broker_url).hostname, urlsplit(broker_url).port
    with Chroot(root) as chroot:
        step(f"{suite}: install from the offline archive as docs/raspberry-pi.md says, with the network cut")
        started = time.monotonic()
        chroot.sh(f"if python3 -c \"import socket; socket.create_connection(('{host}', {port}), 5)\" 2>/dev/null; "
                  "then\n  echo 'the network is not cut: the host broker answered' >&2; exit 1\nfi\n"
                  f"cd /opt/src && sha256sum -c {archive.name}.sha256 && tar xzf {archive.name}\n"
                  "python3 -m venv --system-site-packages /opt/linewatch\n"
                  "python3 -c 'import numpy; print(\"numpy==\" + numpy.__version__)' > /tmp/system-numpy.txt\n"
                  "/opt/linewatch/bin/pip install -q --disable-pip-version-check --no-index --find-links "
                  f"/opt/src/{folder}/wheels -c /tmp/system-numpy.txt 'linewatch[edge,test]'\n"
                  "echo pi-check-password > /tmp/mqtt-password\n"  # the host's test broker takes any password
                  f"/opt/linewatch/bin/linewatch install --model /opt/src/tests/fixtures/{tiny.name} "
                  f"--device-id pi-{suite} --broker {broker_url} --password-file /tmp/mqtt-password "
                  "--source /tmp/photos", offline=True)
        install_s = time.monotonic() - started
        unit = (root / "etc/systemd/system/linewatch.service").read_text()
        assert "ExecStart=/opt/linewatch/bin/linewatch run" in unit and "Type=notify" in unit
        assert (root / "var/lib/linewatch/model.tflite").read_bytes() == tiny.read_bytes()
        step(f"{suite}: the system's numpy, and an extension built against it")
        numpy = chroot.sh("/opt/linewatch/bin/python -c 'import numpy, bottleneck, cv2; "
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
        step(f"{suite}: the device test tier ({TIERS[suite]})")
        chroot.sh(f"cd /opt/src && /opt/linewatch/bin/python -m pytest -q -m '{TIERS[suite]}' "
                  "-p no:cacheprovider --timeout 900 tests")
    return {"suite": suite, "numpy": numpy[0], "opencv": numpy[1], "install_mb": int(size),
            "install_s_emulated": round(install_s), "one_frame_run_s_emulated": round(one_frame_s, 1),
            "folder_fps_emulated": summary["fps"]}


def expected_s(suite: str) -> float:
    """About how long the suite's check takes on the machine EXPECTED_S was measured on."""
    return EXPECTED_S[suite] + (0 if _usable(_tarball(suite)) else BUILD_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="append", choices=SUITES, help="bookworm, trixie (default: both)")
    parser.add_argument("--strict", action="store_true", help="fail where the check cannot run (no root)")
    parser.add_argument("--budget-s", type=float, help="leave out a suite whose check would end later than this "
                        "many seconds from now (CI: what is left of its time limit)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pi-check: needs root (binfmt_misc, chroot, mounts): skipped", file=sys.stderr)
        return 1 if args.strict else 0
    sys.path.insert(0, str(ROOT))
    from linewatch.edge.demo.brokers import MosquittoBroker
    from tests.pi import dist

    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        ensure_host_tools()
        register_binfmt(trixie_qemu())
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"pi-check: cannot set up arm64 emulation ({exc}): skipped", file=sys.stderr)
        return 1 if args.strict else 0
    with tempfile.TemporaryDirectory() as tmp:
        archive = dist.build(Path(tmp), extras="edge,test")  # make dist's archive, with the device tier's runner
        broker = MosquittoBroker(workdir=Path(tmp) / "mosquitto")
        broker.start()
        try:
            results, left_out = [], []
            slowness = 1.0  # this machine against the one EXPECTED_S was measured on, once a suite has run
            for suite in args.suite or SUITES:
                planned = expected_s(suite)
                left = None if args.budget_s is None else args.budget_s - (time.monotonic() - started)
                if left is not None and planned * slowness > left:
                    left_out.append(f"{suite} (about {planned * slowness:.0f} s, {max(left, 0):.0f} s of the "
                                    f"budget left; `tests/pi/check.py --suite {suite}` runs it)")
                    print(f"\npi-check: left out {left_out[-1]}", file=sys.stderr, flush=True)
                    continue
                begun = time.monotonic()
                results.append(check(suite, archive, ROOT / "tests" / "fixtures" / "tiny.tflite", broker.url))
                slowness = max(1.0, (time.monotonic() - begun) / planned)
        except Unavailable as exc:
            print(f"pi-check: {exc}: skipped", file=sys.stderr)
            return 1 if args.strict else 0
        finally:
            broker.stop()
    print("\npi-check (arm64 under qemu: sizes are real, times are emulated, not Pi speed)")
    for r in results:
        print("  " + ", ".join(f"{k} {v}" for k, v in r.items()))
    for text in left_out:
        print(f"  left out: {text}")
    print(f"  took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
