"""Small file helpers shared by checkpoints and runs: content hashes and atomic rewrites."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: a crash leaves the old file or the new, never
    a half-written one (written beside it, flushed, then renamed over it)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    try:
        with open(temp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as error:  # a full disk: the message names the file, not a descriptor
        if error.errno is not None and error.filename is None:
            error.filename = str(path)
        raise
    finally:
        temp.unlink(missing_ok=True)


def format_of(saved: dict, newest: int, kind: str) -> int:
    """The format number a saved file declares in its "format" key (none: 1, the files
    written before formats were), checked against the newest this gigamlx reads.

    Raises:
        ValueError: not a format number, or a newer one; the message names `kind` ("config")
            and the caller adds the file.
    """
    version = saved.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"format {version!r} is not a {kind} format number")
    if version > newest:
        raise ValueError(
            f"{kind} format {version} was written by a newer gigamlx; this one reads {kind} "
            f"format ≤ {newest}: upgrade gigamlx to use it"
        )
    return version
