"""Over-the-air model updates: chunks over MQTT, verified, self-checked, swapped atomically, with rollback.

A deployer (``linewatch deploy``) sends ``cmd/ota`` ``{"action": "begin", "transfer", "size",
"sha256", "chunk_size", "chunks", "signature"}``, then the file in binary chunks on
``cmd/ota/chunk/<transfer>/<index>``, then ``{"action": "end", "transfer"}``. Only at ``end``
does anything change, and only if every step passes: all chunks arrived, the sha256 matches,
the signature verifies (when ``ota.public_key`` is set), the file is a linewatch model whose
card pins its bytes, a fresh interpreter loads it, and it classifies the device's own recent
frames sanely. Then the files are swapped atomically (the previous model is kept beside the
current one) and the running pipeline moves to the new engine between two frames. Any failure
is a reply with the reason; the running model stays. ``cmd/rollback`` swaps back.

With ``"shadow": true`` at begin, the same checks lead to ``model.candidate.tflite`` instead, run
beside the current model (``linewatch.edge.device.shadow``) until ``promote`` swaps it in as
above or ``discard`` drops it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linewatch.edge.errors import LinewatchError
from linewatch.edge.model import artifact, signing
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Engine

logger = logging.getLogger(__name__)

TRANSFER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Transfer:
    id: str
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    signature: bytes | None
    path: Path
    shadow: bool = False  # run it beside the current model (``cmd/shadow`` promotes it), rather than swap it in
    received: set[int] = field(default_factory=set)


def previous_path(model_path: Path) -> Path:
    """Where the model before the current one is kept: ``model.previous.tflite`` beside ``model.tflite``."""
    return model_path.with_name(f"{model_path.stem}.previous{model_path.suffix}")


def candidate_path(model_path: Path) -> Path:
    """Where a model in shadow is kept until it is promoted or aborted: ``model.candidate.tflite``."""
    return model_path.with_name(f"{model_path.stem}.candidate{model_path.suffix}")


def self_check(engine: Engine, frames: list[np.ndarray]) -> None:
    """``ValueError`` unless the model is one the device can trust with the line.

    Its card was not rejected by the parity gate (that the card fits the model, the engine has
    checked), and on the device's own recent frames every output is a finite probability vector.
    """
    card = engine.model.card
    if card.rejected or card.parity.get("accepted") is False:
        raise ValueError("the model failed its parity gate at conversion: it is not deployable")
    for image in frames or [np.full((engine.height, engine.width, 3), 128, np.uint8)]:
        scores = engine.predict(image).scores
        if not np.all(np.isfinite(scores)) or abs(float(scores.sum()) - 1.0) > 0.05:
            raise ValueError("the model's outputs on this device's frames are not probabilities: it is broken")


class ModelUpdater:
    """The ``ota`` and ``rollback`` commands, and the one way a new model is put to work."""

    def __init__(self, model_path: Path, work_dir: Path, install: Callable[[ModelArtifact, Engine], None],
                 make_engine: Callable[[ModelArtifact, int | None], Engine],
                 reference_frames: Callable[[], list[np.ndarray]], public_key: Ed25519PublicKey | None = None,
                 max_bytes: int = 64 * 2**20, shadow: Callable[[ModelArtifact, Engine], None] | None = None,
                 shadow_failed: Callable[[str], None] | None = None) -> None:
        """``make_engine(model, threads)``: an engine (threads None: as configured); ``shadow(model, engine)`` runs a
        checked candidate beside the current model (``"shadow": true`` at begin), ``shadow_failed(reason)`` hears
        of one that did not pass its checks."""
        self.model_path = model_path
        self.work_dir = work_dir
        self.install = install
        self.make_engine = make_engine
        self.reference_frames = reference_frames
        self.public_key = public_key
        self.max_bytes = max_bytes
        self.shadow = shadow
        self.shadow_failed = shadow_failed
        self.transfer: Transfer | None = None

    # --- commands ------------------------------------------------------------------------------

    def ota(self, body: dict[str, Any]) -> dict[str, Any]:
        action = body.get("action")
        if action == "begin":
            return self._begin(body)
        if action == "end":
            return self._end(body)
        if action == "abort":
            self._drop()
            return {"aborted": True}
        raise ValueError('ota needs "action": begin, end or abort')

    def rollback(self, body: dict[str, Any]) -> dict[str, Any]:
        """Back to the model that ran before the current one (and the current one becomes the previous)."""
        previous = previous_path(self.model_path)
        if not previous.is_file():
            raise ValueError(f"there is no previous model ({previous.name}) to go back to")
        model, engine = self.checked(previous)
        current = _link_beside(self.model_path, "rollback")
        os.replace(previous, self.model_path)
        os.replace(current, previous)
        _sync_dir(self.model_path.parent)
        model.path = self.model_path
        self.install(model, engine)
        return _describe(model)

    def chunk(self, topic: str, payload: bytes) -> None:
        """``…/cmd/ota/chunk/<transfer>/<index>``: written at its place; anything odd is ignored."""
        transfer = self.transfer
        _, transfer_id, index_text = topic.rsplit("/", 2)
        if transfer is None or transfer_id != transfer.id or not re.fullmatch(r"[0-9]{1,9}", index_text):
            logger.debug("ignoring OTA chunk %s: no such transfer", topic)
            return
        index = int(index_text)
        expected = min(transfer.chunk_size, transfer.size - index * transfer.chunk_size)
        if index >= transfer.chunks or len(payload) != expected:
            logger.warning("ignoring OTA chunk %d of transfer %s: %d bytes where %d belong", index, transfer.id,
                           len(payload), expected)
            return
        with transfer.path.open("r+b") as f:
            f.seek(index * transfer.chunk_size)
            f.write(payload)
        transfer.received.add(index)

    # --- steps ---------------------------------------------------------------------------------

    def _begin(self, body: dict[str, Any]) -> dict[str, Any]:
        transfer_id, size, digest = body.get("transfer"), body.get("size"), body.get("sha256")
        chunk_size, signature, shadow = body.get("chunk_size"), body.get("signature"), body.get("shadow", False)
        if not isinstance(transfer_id, str) or not TRANSFER_ID.match(transfer_id):
            raise ValueError("begin needs a transfer id of letters, digits, _ or -")
        if not isinstance(size, int) or not 0 < size <= self.max_bytes:
            raise ValueError(f"begin needs a size of 1 to {self.max_bytes} bytes (ota.max_mb)")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("begin needs the sha256 of the model, 64 hex digits")
        if not isinstance(chunk_size, int) or not 1024 <= chunk_size <= 2**20:
            raise ValueError("begin needs a chunk_size of 1 KiB to 1 MiB")
        if not isinstance(shadow, bool):
            raise ValueError('"shadow" is true or false')
        try:
            raw_signature = base64.b64decode(signature, validate=True) if signature else None
        except ValueError:
            raise ValueError("the signature must be base64") from None
        self._drop()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / f"ota-{transfer_id}.part"
        with path.open("wb") as f:
            f.truncate(size)
        chunks = -(-size // chunk_size)
        self.transfer = Transfer(transfer_id, size, digest, chunk_size, chunks, raw_signature, path, shadow)
        logger.info("OTA transfer %s: %d bytes in %d chunks%s", transfer_id, size, chunks,
                    ", for a shadow" if shadow else "")
        return {"transfer": transfer_id, "chunks": chunks}

    def _end(self, body: dict[str, Any]) -> dict[str, Any]:
        transfer = self.transfer
        if transfer is None or body.get("transfer") != transfer.id:
            raise ValueError("no such transfer: begin one first")
        missing = sorted(set(range(transfer.chunks)) - transfer.received)
        if missing:
            raise ValueError(f"{len(missing)} chunk(s) missing, first {missing[:10]}: send them again, then end")
        data = transfer.path.read_bytes()
        try:
            if hashlib.sha256(data).hexdigest() != transfer.sha256:
                raise ValueError("the sha256 does not match: a chunk was damaged on the way; deploy again")
            if self.public_key is not None:
                try:
                    signing.verify(data, transfer.signature, self.public_key)
                except LinewatchError as exc:
                    raise ValueError(str(exc)) from None
            model, engine = self.checked(transfer.path, threads=1 if transfer.shadow else None)
        except ValueError as exc:
            self._drop()
            if transfer.shadow and self.shadow_failed is not None:
                self.shadow_failed(str(exc))
            raise
        self.transfer = None
        if transfer.shadow:  # kept beside the current model until cmd/shadow promotes or aborts it
            if self.shadow is None:
                raise ValueError("this device runs no shadow")
            target = candidate_path(self.model_path)
            _durable_rename(transfer.path, target)
            model.path = target
            self.shadow(model, engine)
            return {**_describe(model), "shadow": True}
        return self._swap_in(transfer.path, model, engine)

    def promote(self) -> dict[str, Any]:
        """The candidate in shadow becomes the current model, as an update would (``cmd/rollback`` goes back)."""
        candidate = candidate_path(self.model_path)
        if not candidate.is_file():
            raise ValueError("there is no candidate in shadow to promote: deploy one with --shadow")
        model, engine = self.checked(candidate)
        return self._swap_in(candidate, model, engine)

    def discard(self) -> None:
        """The candidate's file goes (aborted, or left by a run that stopped)."""
        candidate_path(self.model_path).unlink(missing_ok=True)

    def _swap_in(self, path: Path, model: ModelArtifact, engine: Engine) -> dict[str, Any]:
        """``path`` becomes the model file in one rename, the current one the previous; the pipeline takes it."""
        if self.model_path.is_file():  # the current model becomes the previous one, in one rename
            os.replace(_link_beside(self.model_path, "previous"), previous_path(self.model_path))
        _durable_rename(path, self.model_path)
        model.path = self.model_path
        self.install(model, engine)
        return _describe(model)

    def checked(self, path: Path, threads: int | None = None) -> tuple[ModelArtifact, Engine]:
        """Load ``path`` in a fresh interpreter (of ``threads``) and self-check it; ``ValueError`` says why not."""
        try:
            model = artifact.load(path)
            if not model.has_card:
                raise ValueError("the model has no linewatch card: convert it with 'linewatch convert'")
            engine = self.make_engine(model, threads)
        except LinewatchError as exc:
            raise ValueError(str(exc)) from None
        self_check(engine, self.reference_frames())
        return model, engine

    def _drop(self) -> None:
        if self.transfer is not None:
            self.transfer.path.unlink(missing_ok=True)
            self.transfer = None


def _describe(model: ModelArtifact) -> dict[str, Any]:
    return {"model": model.name, "version": model.version, "sha256": model.sha256}


def _link_beside(path: Path, tag: str) -> Path:
    """A second name for ``path`` in its folder, so a rename can replace ``path`` without losing it."""
    link = path.with_name(f".{path.name}.{tag}")
    link.unlink(missing_ok=True)
    os.link(path, link)
    return link


def _durable_rename(source: Path, target: Path) -> None:
    """``source`` flushed to disk, then renamed to ``target``, the rename itself made durable."""
    with source.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(source, target)
    _sync_dir(target.parent)


def _sync_dir(folder: Path) -> None:
    """Make the renames themselves durable (a power cut right after must not undo them)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
