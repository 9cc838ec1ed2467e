"""The setup page: its API against a daemon on the simulated conveyor, and a real headless Chromium using it."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.edge import options
from linewatch.edge.device.config import Config
from linewatch.edge.device.web import LiveFrame
from tests.browser import Browser
from tests.helpers import CLI, ENV, ROOT, Collector, stop_daemon
from tests.test_contract import _certificates

TOKEN = "page-token-for-tests"
CORNER = [0.02, 0.02, 0.2, 0.2]  # empty belt: the tiny model says "empty" there
ARTIFACTS = ROOT / "build" / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, model: Path, device: str) -> Path:
    path = tmp_path / "linewatch.toml"
    path.write_text(f'# the line by the door\ndevice_id = "{device}"\nstate_dir = "{tmp_path / "state"}"\n\n'
                    f'[model]\npath = "{model}"\n\n[source]\nspec = "conveyor:4"  # the simulator\nfps = 25\n')
    return path


def _start(config: Path, broker_url: str, port: int, *extra: str, token_file: Path | None = None) -> subprocess.Popen:
    """The daemon with the page on ``port``, once it answers (with TOKEN from the environment, never argv, or the
    one it made in ``token_file``) and has classified a frame."""
    env = ENV if token_file else {**ENV, "LINEWATCH_HTTP_TOKEN": TOKEN}
    proc = subprocess.Popen([*CLI, "run", "--config", str(config), "--broker", broker_url,
                             "--http", f"127.0.0.1:{port}", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            token = token_file.read_text().strip() if token_file else TOKEN
            status, page, _ = _get(port, "/api/status", token)
            if status == 200 and page["latest"] is not None:  # a frame classified: the live view has a picture
                return proc
        except (OSError, json.JSONDecodeError):
            pass
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    raise AssertionError("the setup page never answered")


def _get(port: int, path: str, token: str | None = None, cookie: str | None = None) -> tuple[int, Any, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
            status, headers = reply.status, dict(reply.headers)
    except urllib.error.HTTPError as exc:
        body, status, headers = exc.read(), exc.code, dict(exc.headers)
    is_json = headers.get("Content-Type", "").startswith("application/json")
    return status, json.loads(body) if is_json else body, headers


def _post(port: int, path: str, body: bytes, token: str | None = TOKEN) -> tuple[int, Any, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _labels_after(sub: Collector, device: str, frame_id: int, count: int = 40) -> list[str]:
    """The labels of ``count`` results of frames after ``frame_id``."""
    topic = f"{device}/result"
    assert sub.wait_for(lambda s: len([r for r in s.on(topic) if r["frame_id"] > frame_id]) >= count, 60)
    return [r["label"] for r in sub.on(topic) if r["frame_id"] > frame_id][:count]


def test_the_setup_api_needs_the_token_applies_the_region_and_saves_frames(tiny: Path, broker,
                                                                           tmp_path: Path) -> None:
    port, device = _free_port(), "page-api"
    config = _config(tmp_path, tiny, device)
    sub = Collector(broker.url, f"linewatch/{device}/result")
    proc = _start(config, broker.url, port)
    try:
        assert _get(port, "/")[0] == 200  # the page shell and its login need no token
        for token in (None, "wrong"):
            for path in ("/api/status", "/api/frame.jpg", "/api/config", "/api/stream", "/metrics"):
                assert _get(port, path, token)[0] == 401, (path, token)
        assert _post(port, "/api/config", b'{"roi": null}', token=None)[0] == 401
        assert _post(port, "/login", b'{"token": "wrong"}', token=None)[0] == 401
        status, _, headers = _post(port, "/login", json.dumps({"token": TOKEN}).encode(), token=None)
        cookie = headers["Set-Cookie"].split(";")[0]
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        status, page, _ = _get(port, "/api/status", cookie=cookie)
        assert status == 200 and page["device_id"] == device and page["model"]["labels"][0] == "crack"
        assert TOKEN not in json.dumps(page) and page["view"] == {"roi": None, "rotate": 0}
        status, metrics, _ = _get(port, "/metrics", TOKEN)
        assert status == 200 and b'linewatch_frames_total{device_id="page-api"}' in metrics
        ids = set()
        for _ in range(3):
            status, jpeg, headers = _get(port, "/api/frame.jpg", TOKEN)
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert status == 200 and image.shape == (120, 160, 3)
            ids.add(int(headers["X-Frame-Id"]))
            time.sleep(0.4)
        assert len(ids) == 3  # the live view follows the line

        before = _labels_after(sub, device, 0)
        for bad in (b"{", b"[1]", b'{"roi": [0.5, 0.5, 0.8, 0.1]}', b'{"roi": [0, 0, 1, 1], "rotate": 45}',
                    b'{"roi": "0,0,1,1"}', b"x" * 20_000):
            status, answer, _ = _post(port, "/api/config", bad)
            assert status in (400, 413) and answer["error"], bad
        status, answer, _ = _post(port, "/api/config", json.dumps({"roi": CORNER, "rotate": 0}).encode())
        page_settings = tmp_path / "state" / "setup.toml"
        assert status == 200 and answer["saved_to"] == str(page_settings), answer
        applied_at = _get(port, "/api/status", TOKEN)[1]["stats"]["frames"]
        after = _labels_after(sub, device, applied_at + 5)
        assert "roi = [0.02, 0.02, 0.2, 0.2]" in page_settings.read_text()
        assert "roi" not in config.read_text()  # the config file is left as the person wrote it
        status, answer, _ = _post(port, "/api/label", b'{"label": "scratch"}')
        assert status == 200 and Path(answer["saved"]).parent == tmp_path / "state" / "collected" / "scratch"
        assert cv2.imread(answer["saved"]).shape == (120, 160, 3)
        assert _post(port, "/api/label", b'{"label": "../etc"}')[0] == 400
        stop_daemon(proc)
        proc = _start(config, broker.url, port)  # a restart keeps the view
        assert _get(port, "/api/config", TOKEN)[1] == {"roi": CORNER, "rotate": 0}
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    assert before.count("empty") < len(before) / 2 and after.count("empty") >= 0.9 * len(after), (before, after)


def test_without_a_configured_token_one_is_made_kept_private_and_never_logged(tiny: Path, broker,
                                                                            tmp_path: Path) -> None:
    port = _free_port()
    config = _config(tmp_path, tiny, "page-token")
    token_file = tmp_path / "state" / "http-token"
    proc = _start(config, broker.url, port, token_file=token_file)
    try:
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token_file.stat().st_mode & 0o777 == 0o600
        assert _get(port, "/api/status", token)[0] == 200 and _get(port, "/api/status", "guess")[0] == 401
        _, err = stop_daemon(proc)
    finally:
        proc.kill()
    assert token not in err and str(token_file) in err  # where it is, never what it is
    proc = _start(config, broker.url, port, token_file=token_file)  # the same token after a restart
    try:
        assert token_file.read_text().strip() == token
        stop_daemon(proc)
    finally:
        proc.kill()


def test_the_page_over_tls_with_a_configured_certificate(tiny: Path, broker, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path / "tls")
    port = _free_port()
    config = _config(tmp_path, tiny, "page-tls")
    proc = subprocess.Popen([*CLI, "run", "--config", str(config), "--broker", broker.url, "--http",
                             f"127.0.0.1:{port}", "--set", f"http.cert_file={cert}", "--set", f"http.key_file={key}"],
                            cwd=ROOT, env={**ENV, "LINEWATCH_HTTP_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    context = ssl.create_default_context(cafile=str(ca))
    # Python 3.13 verifies strictly by default; the throwaway test CA has no key-usage extensions
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    request = urllib.request.Request(f"https://127.0.0.1:{port}/api/status", headers={"Authorization":
                                                                                    f"Bearer {TOKEN}"})
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as reply:
                    answer = json.loads(reply.read())
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.2)
        assert answer is not None and answer["device_id"] == "page-tls"
        with pytest.raises(OSError):  # plain http to a TLS port gets nothing
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5)
        stop_daemon(proc)
    finally:
        proc.kill()


def test_http_alone_listens_on_loopback_only() -> None:
    parser = argparse.ArgumentParser()
    options.add_options(parser, Config)
    assert getattr(parser.parse_args(["--http"]), "http.listen") == "127.0.0.1:8080"
    assert getattr(parser.parse_args(["--http", "0.0.0.0:9000"]), "http.listen") == "0.0.0.0:9000"
    assert getattr(parser.parse_args([]), "http.listen") is None


def test_the_live_view_is_encoded_only_when_asked_and_at_most_fps_times_a_second() -> None:
    class View:
        frame_id = 0

        def latest_frame(self) -> tuple[int, np.ndarray]:
            self.frame_id += 1
            return self.frame_id, np.zeros((480, 1280, 3), np.uint8)

    live = LiveFrame(View(), fps=4)  # type: ignore[arg-type]
    time.sleep(0.3)
    assert live.encoded == 0  # nobody asked: nothing encoded, whatever the frame loop does
    first = live.jpeg()
    for _ in range(50):
        assert live.jpeg() == first  # a burst of viewers within a quarter second shares one JPEG
    assert live.encoded == 1 and first is not None
    assert cv2.imdecode(np.frombuffer(first[1], np.uint8), cv2.IMREAD_COLOR).shape == (240, 640, 3)
    time.sleep(0.3)
    assert live.jpeg() != first and live.encoded == 2


def test_a_person_in_chromium_draws_the_region_and_the_daemon_uses_it(tiny: Path, broker, tmp_path: Path) -> None:
    executable = Browser.find()
    if executable is None:
        pytest.skip("Chromium is not installed here (make test installs Debian's chromium where apt-get exists)")
    port, device = _free_port(), "page-browser"
    config = _config(tmp_path, tiny, device)
    sub = Collector(broker.url, f"linewatch/{device}/result")
    proc = _start(config, broker.url, port)
    browser = Browser(executable)
    try:
        browser.goto(f"http://127.0.0.1:{port}/")
        browser.wait_for("!document.getElementById('login').classList.contains('hidden')")  # no token: log in
        browser.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
        browser.click("#login-form button")
        browser.wait_for("!document.getElementById('app').classList.contains('hidden') && "
                         "document.getElementById('live').naturalWidth > 0 && "
                         "document.getElementById('conn').textContent === 'live'")
        # A sample of the shown picture's pixels; null while the next one loads (no size then).
        fingerprint = ("(() => { const img = document.getElementById('live'), c = document.createElement('canvas');"
                       " if (!img.complete || img.naturalWidth === 0) return null;"
                       " c.width = img.naturalWidth; c.height = img.naturalHeight; const x = c.getContext('2d');"
                       " x.drawImage(img, 0, 0); return Array.from(x.getImageData(0, 0, c.width, c.height).data"
                       ".filter((_, i) => i % 97 === 0)).join(','); })()")
        first = browser.wait_for(fingerprint)
        browser.wait_for(f"((now) => now !== null && now !== {json.dumps(first)})({fingerprint})")  # it moves
        before = _labels_after(sub, device, 0)

        left, top, width, height = browser.evaluate(
            "(() => { const r = document.getElementById('roi').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()")
        browser.drag((left + CORNER[0] * width, top + CORNER[1] * height),
                     (left + (CORNER[0] + CORNER[2]) * width, top + (CORNER[1] + CORNER[3]) * height))
        browser.click("#apply")
        browser.wait_for("document.getElementById('message').textContent.startsWith('applied')")
        applied = _get(port, "/api/config", TOKEN)[1]
        assert applied["roi"] == pytest.approx(CORNER, abs=0.02), applied
        applied_at = _get(port, "/api/status", TOKEN)[1]["stats"]["frames"]
        after = _labels_after(sub, device, applied_at + 5)
        browser.wait_for("document.getElementById('verdict').textContent === 'empty'")
        browser.screenshot(ARTIFACTS / "setup-page.png")
        # On a phone: one column, nothing wider than the screen, the live view across it.
        browser.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        browser.wait_for("window.innerWidth === 390 && Array.from(document.querySelectorAll('section, button')).every("
                         "e => e.getBoundingClientRect().right <= window.innerWidth) && "
                         "document.getElementById('live').getBoundingClientRect().width >= 300")
        browser.screenshot(ARTIFACTS / "setup-page-phone.png")
        stop_daemon(proc)
    finally:
        browser.close()
        proc.kill()
        sub.close()
    assert "roi = [" in (tmp_path / "state" / "setup.toml").read_text()
    assert before.count("empty") < len(before) / 2 and after.count("empty") >= 0.9 * len(after), (before, after)
    assert (ARTIFACTS / "setup-page.png").stat().st_size > 10_000
