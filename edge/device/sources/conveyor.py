"""The demo's simulated conveyor camera: parts ride through the view with known ground truth."""

from __future__ import annotations

from collections.abc import Iterator

from linewatch.edge import simulator
from linewatch.edge.device.sources import Captured
from linewatch.edge.device.sources.pacing import Pacer


class ConveyorSource:
    """An endless, seeded stream of belt frames.

    The class of the part in view is not passed on: frame ``n`` shows
    ``simulator.conveyor_truth(seed, drift_from=...)``'s ``n``-th label, which is how the demo and the tests judge
    results.
    """

    live = True
    reopens = True

    def __init__(self, seed: int = 0, fps: float | None = None, drift_from: int | None = None) -> None:
        """``drift_from``: the frame from which the line drifts (``simulator.conveyor``)."""
        self.name = f"conveyor:{seed}" + (f":drift={drift_from}" if drift_from is not None else "")
        self.seed = seed
        self.fps = fps
        self.drift_from = drift_from

    def frames(self) -> Iterator[Captured]:
        pacer = Pacer(self.fps)
        for frame in simulator.conveyor(self.seed, drift_from=self.drift_from):
            pacer.wait()
            yield Captured(frame.image)

    def close(self) -> None:
        pass
