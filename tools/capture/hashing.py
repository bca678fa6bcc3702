"""SHA-256 helpers shared by the writer, the reader and the model loader."""

import hashlib
from pathlib import Path

from .errors import MissingFileError

_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a whole file; raise MissingFileError if it is absent."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()
