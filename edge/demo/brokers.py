"""A local MQTT broker for the demo and the tests: mosquitto when installed, else an embedded one.

``MosquittoBroker`` runs the real mosquitto on a loopback port and can be stopped and
started again on the same port, which is how the tests take the broker away mid-stream.
``EmbeddedBroker`` (amqtt, MQTT 3.1.1 only) lets ``make demo`` run where mosquitto is not
installed; production devices talk to the plant's own broker.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from linewatch.edge.errors import BrokerError

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False


def find_mosquitto() -> str | None:
    """The mosquitto binary; Debian installs it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None)


class MosquittoBroker:
    """A real mosquitto on ``host:port`` (loopback by default), optionally with TLS, passwords and persistence.

    ``launcher`` prefixes its command line (``ip netns exec NS`` runs it in a network namespace
    the tests made, on that namespace's address); ``extra`` lines are appended to its config.
    """

    protocol = "5"

    def __init__(self, port: int | None = None, workdir: Path | None = None,
                 persistence: bool = False, tls_files: tuple[Path, Path, Path] | None = None,
                 password_file: Path | None = None, host: str = "127.0.0.1",
                 launcher: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto is not installed: apt-get install mosquitto")
        self.binary = binary
        self.port = port or free_port()
        self.host = host
        self.launcher = launcher
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="linewatch-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        # Messages for persistent sessions survive a restart only with persistence on.
        storage = f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n" if persistence \
            else "persistence false\n"
        listener = f"listener {self.port} {host}\n"
        if tls_files:
            listener += "cafile {}\ncertfile {}\nkeyfile {}\n".format(*tls_files)
        listener += f"password_file {password_file}\nallow_anonymous false\n" if password_file \
            else "allow_anonymous true\n"
        logging_conf = "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nuser root\n"
        self.config_path.write_text(listener + storage + logging_conf + "".join(f"{line}\n" for line in extra))
        self.tls = tls_files is not None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([*self.launcher, self.binary, "-c", str(self.config_path)], stdout=log,
                                        stderr=subprocess.STDOUT)
        if not wait_listening(self.port, host=self.host):
            self.stop()
            raise BrokerError(f"mosquitto did not start on port {self.port}: see {self.log_path}")

    def stop(self) -> None:
        """Stop like a broker being shut down: clients see the connection close."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut: no goodbye to clients, no last save of its persistence."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class EmbeddedBroker:
    """amqtt in a background thread, for the demo where mosquitto is missing (MQTT 3.1.1)."""

    protocol = "3.1.1"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise BrokerError("neither mosquitto nor amqtt is installed: apt-get install mosquitto, "
                              "or pip install amqtt") from None
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(Broker(config, loop=self._loop).start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="embedded-broker", daemon=True)
        self._thread.start()
        if not wait_listening(self.port):
            raise BrokerError(f"the embedded broker did not start on port {self.port}")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def local_broker(workdir: Path) -> MosquittoBroker | EmbeddedBroker:
    """mosquitto if it is installed, otherwise the embedded broker."""
    if find_mosquitto():
        return MosquittoBroker(workdir=workdir)
    logger.info("mosquitto is not installed: using the embedded amqtt broker (MQTT 3.1.1)")
    return EmbeddedBroker()
