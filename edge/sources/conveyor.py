"""The demo's simulated conveyor camera: parts ride through the view with known ground truth."""

from __future__ import annotations

from collections.abc import Iterator

from edge import simulator
from edge.sources import Captured
from edge.sources.pacing import Pacer


class ConveyorSource:
    """An endless, seeded stream of belt frames; ``truth`` is the class of the part in view."""

    live = True

    def __init__(self, seed: int = 0, fps: float | None = None) -> None:
        self.name = f"conveyor:{seed}"
        self.seed = seed
        self.fps = fps

    def frames(self) -> Iterator[Captured]:
        pacer = Pacer(self.fps)
        for frame in simulator.conveyor(self.seed):
            pacer.wait()
            yield Captured(frame.image, truth=frame.truth)

    def close(self) -> None:
        pass
