"""Writing files so that a reader, a crash or a power cut never sees half of one.

Used for everything another process polls or a device loads: model artifacts, training
checkpoints' state, configuration files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path | str, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` beside ``path``, flush it to disk, then rename it over ``path`` in one step.

    The file gets ``mode`` before it appears (readable by all by default, as models, public keys and signatures
    must be for the service user that gets a copy; secrets pass 0o600). The folder's mode still guards it.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
