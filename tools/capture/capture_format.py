"""The htfr capture format: manifest schema, atomic shard writer and validating reader.

See docs/capture-format.md for the specification. A capture directory holds
``manifest.json`` and ``shard-NNNNN.safetensors`` files. Every shard is written to a
temporary name, fsynced and renamed; the manifest is rewritten the same way after
each shard with ``"complete": false`` and with ``"complete": true`` only once the
last shard is in place.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .errors import ChecksumError, CorruptInputError, MissingFileError, ParameterMismatchError
from .hashing import sha256_bytes

FORMAT_NAME = "htfr-capture"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = {"hidden": "F16", "qkv": "F16", "compact_logprobs": "F16", "true_logprob": "F32"}
F16_MAX = float(np.finfo(np.float16).max)

# Manifest keys that fix the content of a capture; a resume must match them all.
PARAMETER_KEYS = (
    "format", "version", "model", "tokenizer", "corpus", "window", "stride",
    "layers", "qkv_layers", "dtypes", "compact_vocab", "engine",
)  # fmt: skip


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.safetensors"


def expected_tensors(manifest: dict, positions: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype, shape) that a shard of ``positions`` must hold."""
    model = manifest["model"]
    p = positions
    specs = {
        "window": ("I32", (p,)),
        "position": ("I32", (p,)),
        "token": ("I32", (p,)),
        "target": ("I32", (p,)),
        "target_compact": ("I32", (p,)),
        "scored": ("U8", (p,)),
        "true_logprob": (manifest["dtypes"]["true_logprob"], (p,)),
        "compact_logprobs": (manifest["dtypes"]["compact_logprobs"], (p, manifest["compact_vocab"]["size"])),
    }
    for layer in manifest["layers"]:
        specs[f"hidden.{layer}"] = (manifest["dtypes"]["hidden"], (p, model["hidden_size"]))
    for layer in manifest["qkv_layers"]:
        qkv = manifest["dtypes"]["qkv"]
        specs[f"q.{layer}"] = (qkv, (p, model["n_heads"], model["head_dim"]))
        specs[f"k.{layer}"] = (qkv, (p, model["n_kv_heads"], model["head_dim"]))
        specs[f"v.{layer}"] = (qkv, (p, model["n_kv_heads"], model["head_dim"]))
    return specs


def to_f16(array: np.ndarray) -> np.ndarray:
    """Cast to float16, saturating values beyond +-65504 instead of producing inf."""
    return np.clip(array, -F16_MAX, F16_MAX).astype(np.float16)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_header(path: Path) -> tuple[dict, bytes]:
    """Parse a safetensors header; return (header dict, the 8 + header_len prefix bytes)."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise CorruptInputError(f"{path}: file shorter than the safetensors length prefix")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > 100_000_000:
                raise CorruptInputError(f"{path}: implausible safetensors header length {header_len}")
            header_bytes = handle.read(header_len)
    except FileNotFoundError as exc:
        raise MissingFileError(f"shard not found: {path}") from exc
    if len(header_bytes) != header_len:
        raise CorruptInputError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(header_bytes)
    except json.JSONDecodeError as exc:
        raise CorruptInputError(f"{path}: safetensors header is not JSON: {exc}") from exc
    return header, prefix + header_bytes


def load_manifest(directory: Path) -> dict:
    """Read and minimally validate ``manifest.json`` of a capture directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise MissingFileError(f"capture manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptInputError(f"{path}: not a UTF-8 JSON document: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptInputError(f"{path}: not an {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise CorruptInputError(f"{path}: unsupported version {manifest.get('version')!r}")
    missing = [k for k in PARAMETER_KEYS + ("complete", "positions", "shards") if k not in manifest]
    if missing:
        raise CorruptInputError(f"{path}: manifest lacks keys {missing}")
    return manifest


def verify_shard_entry(directory: Path, entry: dict) -> None:
    """Check that a listed shard exists with the recorded size and header sha256."""
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise MissingFileError(f"shard listed in the manifest is missing: {path}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CorruptInputError(f"{path}: {size} bytes, manifest says {entry['bytes']}")
    _, prefix = read_header(path)
    if sha256_bytes(prefix) != entry["header_sha256"]:
        raise ChecksumError(f"{path}: header sha256 differs from the manifest")


class CaptureWriter:
    """Write shards and keep the manifest current; resume an interrupted capture.

    Args:
        directory: capture directory (created if needed).
        parameters: manifest entries listed in PARAMETER_KEYS.
        restart: discard any existing capture in ``directory`` and start over.
    """

    def __init__(self, directory: Path, parameters: dict, restart: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.parameters = {k: parameters[k] for k in PARAMETER_KEYS}
        self.shards: list[dict] = []
        self.complete = False
        if (self.directory / MANIFEST_NAME).exists():
            self._resume(restart)
        self._write_manifest()

    @property
    def positions(self) -> int:
        """Positions already stored in complete shards."""
        return sum(s["positions"] for s in self.shards)

    def _resume(self, restart: bool) -> None:
        manifest = load_manifest(self.directory)
        if restart:
            for entry in manifest["shards"]:
                (self.directory / entry["file"]).unlink(missing_ok=True)
            return
        differing = [k for k in PARAMETER_KEYS if manifest[k] != self.parameters[k]]
        if differing:
            raise ParameterMismatchError(
                f"{self.directory} holds a capture with different {differing}; "
                "use another directory or pass --restart to overwrite it"
            )
        for entry in manifest["shards"]:
            verify_shard_entry(self.directory, entry)
        self.shards = list(manifest["shards"])
        self.complete = bool(manifest["complete"])

    def write_shard(self, tensors: dict[str, np.ndarray]) -> None:
        """Write the next shard (all tensors hold the same number of positions)."""
        from safetensors.numpy import save

        if self.complete:
            raise RuntimeError("capture is already complete")
        positions = int(tensors["window"].shape[0])
        expected = expected_tensors(self.parameters, positions)
        if set(tensors) != set(expected):
            raise ValueError(f"shard tensors {sorted(tensors)} != expected {sorted(expected)}")
        data = save({name: np.ascontiguousarray(array) for name, array in tensors.items()})
        name = shard_name(len(self.shards))
        atomic_write(self.directory / name, data)
        (header_len,) = struct.unpack("<Q", data[:8])
        self.shards.append(
            {
                "file": name,
                "first_position": self.positions,
                "positions": positions,
                "bytes": len(data),
                "header_sha256": sha256_bytes(data[: 8 + header_len]),
            }
        )
        self._write_manifest()

    def finish(self) -> None:
        """Mark the capture complete (the only place that writes ``complete: true``)."""
        self.complete = True
        self._write_manifest()

    def _write_manifest(self) -> None:
        manifest = dict(self.parameters)
        manifest["complete"] = self.complete
        manifest["positions"] = self.positions
        manifest["shards"] = self.shards
        atomic_write(self.directory / MANIFEST_NAME, format_manifest(manifest).encode("utf-8"))


def format_manifest(manifest: dict) -> str:
    """JSON text with one line per top-level key and one line per shard."""

    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = [f"  {dump(key)}: {dump(value)}" for key, value in manifest.items() if key != "shards"]
    shards = ",\n".join(f"    {dump(entry)}" for entry in manifest["shards"])
    lines.append(f'  "shards": [\n{shards}\n  ]' if shards else '  "shards": []')
    return "{\n" + ",\n".join(lines) + "\n}\n"


class CaptureReader:
    """Validated read access to a capture directory.

    Args:
        directory: capture directory.
        require_complete: raise CorruptInputError if the manifest is not marked complete.
    """

    def __init__(self, directory: Path, require_complete: bool = True):
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        if require_complete and not self.manifest["complete"]:
            raise CorruptInputError(f"{self.directory}: capture is incomplete (complete=false)")
        first = 0
        for entry in self.manifest["shards"]:
            if entry["first_position"] != first:
                raise CorruptInputError(
                    f"{entry['file']}: first_position {entry['first_position']} != {first}"
                )
            first += entry["positions"]
        if first != self.manifest["positions"]:
            raise CorruptInputError(
                f"shards hold {first} positions, manifest says {self.manifest['positions']}"
            )

    def shard(self, index: int) -> dict[str, np.ndarray]:
        """Load and validate shard ``index``: names, dtypes and shapes as the manifest implies."""
        from safetensors.numpy import load_file

        entry = self.manifest["shards"][index]
        verify_shard_entry(self.directory, entry)
        path = self.directory / entry["file"]
        header, _ = read_header(path)
        expected = expected_tensors(self.manifest, entry["positions"])
        found = {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}
        if found != expected:
            raise CorruptInputError(f"{path}: tensors {found} differ from the expected {expected}")
        return load_file(str(path))

    def shards(self):
        """Iterate over all shards in order."""
        for index in range(len(self.manifest["shards"])):
            yield self.shard(index)
