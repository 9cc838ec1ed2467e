"""The ``state`` topic: what a dashboard shows, published on change and never per frame.

Home Assistant records every state message it receives; fed from ``result`` it would record
every frame (hundreds a second on a fast line). Here the slow facts (an event open or not, event
and part counts, the last part's verdict, frames a second as of the last stats message) are
merged, and published retained when they change, at most once every ``MIN_INTERVAL_S``, and again
on every reconnect: a few messages a second at most, whatever the frame rate.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from linewatch.edge.comms.payloads import DeviceState, rfc3339
from linewatch.edge.comms.publisher import DevicePublisher

MIN_INTERVAL_S = 0.5


class StateReporter:
    """``update(**facts)`` from any thread; a thread of its own publishes the merged state, throttled."""

    def __init__(self, device_id: str, publisher: DevicePublisher) -> None:
        self.device_id = device_id
        self.publisher = publisher
        self.published = 0  # messages sent: the tests count them
        self._facts: dict[str, Any] = {"defect": False, "anomaly": False, "open_events": [], "events": 0, "fps": 0.0}
        self._sent: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="state", daemon=True)
        publisher.on_connect(self._resend)

    def update(self, **facts: Any) -> None:
        with self._cond:
            self._facts.update(facts)
            if facts and self._facts != self._sent:
                self._cond.notify()

    def _resend(self) -> None:
        with self._cond:
            self._sent = None  # the broker may have lost the retained copy: publish it again
            self._cond.notify()

    def _run(self) -> None:
        last = -MIN_INTERVAL_S
        while True:
            with self._cond:
                while not self._stopping and self._facts == self._sent:
                    self._cond.wait()
                if self._stopping:
                    return
                wait = last + MIN_INTERVAL_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # changes meanwhile are merged into one message
            with self._cond:
                facts = dict(self._facts)
            payload = DeviceState(device_id=self.device_id, ts=rfc3339(time.time()), **facts).encode()
            if self.publisher.publish_now(self.publisher.topic("state"), payload, qos=1, retain=True):
                self.published += 1
                with self._cond:
                    self._sent = facts
            last = time.monotonic()  # not connected: tried again at most every MIN_INTERVAL_S, and on connect

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(2)
