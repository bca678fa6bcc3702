"""Export the teacher's token embedding restricted to a capture's compact vocabulary.

Writes one safetensors file with a float32 tensor ``embedding`` of shape
[compact_size, hidden_size] (see "Compact embedding file" in docs/capture-format.md):

- row ``c < unk_index`` is the GGUF ``token_embd.weight`` row of ``token_ids[c]``;
- row ``unk_index`` is the mean of the rows of every vocabulary token not in ``token_ids``
  (accumulated in float64, rounded to float32 once);
- rows are the raw dequantized GGUF rows: Gemma's sqrt(hidden_size) input scaling is **not**
  applied.

Usage: python3 -m tools.capture.embedding --model M.gguf --capture CAPTURE_DIR [--out PATH]
(default PATH: CAPTURE_DIR/compact_embedding.safetensors)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .capture_format import CaptureReader, atomic_write
from .errors import ChecksumError, CorruptInputError, run_cli
from .gguf_model import GgufFile
from .hashing import sha256_bytes, sha256_file

FORMAT_NAME = "htfr-compact-embedding"
FORMAT_VERSION = "1"
UNK_RULE = "mean-of-rest"
TENSOR_NAME = "embedding"
GGUF_TENSOR = "token_embd.weight"
DEFAULT_NAME = "compact_embedding.safetensors"
_CHUNK_ROWS = 1 << 15  # vocabulary rows per step of the unk mean


def compact_vocab_sha256(token_ids) -> str:
    """Hex sha256 of the compact token ids (unk excluded) as consecutive little-endian int32."""
    return sha256_bytes(np.asarray(token_ids, dtype="<i4").tobytes())


def validated_compact_vocab(manifest: dict) -> tuple[np.ndarray, int, int]:
    """(token_ids as int64, size, unk_index) of a manifest, checked for consistency."""
    compact = manifest["compact_vocab"]
    vocab_size = int(manifest["model"]["vocab_size"])
    token_ids = np.asarray(compact["token_ids"], dtype=np.int64)
    size, unk = int(compact["size"]), int(compact["unk_index"])
    if token_ids.ndim != 1 or unk != size - 1 or token_ids.shape[0] != unk:
        raise CorruptInputError(
            f"compact vocabulary is inconsistent: size {size}, unk_index {unk}, "
            f"{token_ids.shape[0]} token ids (expected size - 1 ids and unk_index = size - 1)"
        )
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= vocab_size):
        raise CorruptInputError(f"compact token ids outside 0..{vocab_size - 1}")
    if np.unique(token_ids).shape[0] != token_ids.shape[0]:
        raise CorruptInputError("compact token ids are not distinct")
    if token_ids.shape[0] >= vocab_size:
        raise CorruptInputError("compact vocabulary covers the whole vocabulary: the unk row is undefined")
    return token_ids, size, unk


def compact_embedding(full: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """[len(token_ids) + 1, hidden] float32: the selected rows, then the mean of all other rows."""
    vocab = full.shape[0]
    in_compact = np.zeros(vocab, dtype=bool)
    in_compact[token_ids] = True
    rest_sum = np.zeros(full.shape[1], dtype=np.float64)
    for lo in range(0, vocab, _CHUNK_ROWS):
        hi = min(vocab, lo + _CHUNK_ROWS)
        rest_sum += full[lo:hi][~in_compact[lo:hi]].sum(axis=0, dtype=np.float64)
    rest_count = vocab - int(in_compact.sum())
    out = np.empty((token_ids.shape[0] + 1, full.shape[1]), dtype=np.float32)
    out[:-1] = full[token_ids]
    out[-1] = (rest_sum / rest_count).astype(np.float32)
    return out


def _atomic_write_clean(path: Path, data: bytes) -> None:
    """atomic_write, removing the temporary file if writing it fails."""
    try:
        atomic_write(path, data)
    except BaseException:
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        raise


def export_compact_embedding(model: Path, capture: Path, out: Path | None = None) -> dict:
    """Write the compact embedding file of ``capture``; return a summary (path, shape, figures)."""
    from safetensors.numpy import save

    t0 = time.time()
    capture = Path(capture)
    out = Path(out) if out is not None else capture / DEFAULT_NAME
    manifest = CaptureReader(capture).manifest
    token_ids, size, unk = validated_compact_vocab(manifest)
    expected_sha = manifest["model"]["sha256"]
    model_sha = sha256_file(model)
    if model_sha != expected_sha:
        raise ChecksumError(
            f"{model}: sha256 {model_sha} differs from the capture's model.sha256 {expected_sha} "
            f"({capture} was captured with another model file)"
        )
    gguf = GgufFile(model)
    full = gguf.tensor(GGUF_TENSOR)
    hidden = int(manifest["model"]["hidden_size"])
    vocab_size = int(manifest["model"]["vocab_size"])
    if full.shape != (vocab_size, hidden):
        raise CorruptInputError(
            f"{model}: {GGUF_TENSOR} has shape {list(full.shape)}, "
            f"the manifest implies [{vocab_size}, {hidden}]"
        )
    embedding = compact_embedding(full, token_ids)
    del full
    assert embedding.shape == (size, hidden)
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_sha256": model_sha,
        "compact_vocab_sha256": compact_vocab_sha256(token_ids),
        "unk_rule": UNK_RULE,
        "size": str(size),
        "hidden_size": str(hidden),
    }
    data = save({TENSOR_NAME: embedding}, metadata=metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_clean(out, data)
    norms = np.linalg.norm(embedding.astype(np.float64), axis=1)
    return {
        "out": str(out),
        "shape": list(embedding.shape),
        "bytes": len(data),
        "seconds": time.time() - t0,
        "row_norm_min": float(norms.min()),
        "row_norm_median": float(np.median(norms)),
        "row_norm_max": float(norms.max()),
        "unk_row_norm": float(norms[unk]),
    }


def main(argv=None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python3 -m tools.capture.embedding", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--model", type=Path, required=True, help="teacher GGUF file (sha256 must match the capture)"
    )
    p.add_argument(
        "--capture", type=Path, required=True, help="capture directory whose compact vocabulary is used"
    )
    p.add_argument("--out", type=Path, default=None, help=f"output file (default: CAPTURE/{DEFAULT_NAME})")
    args = p.parse_args(argv)

    def action():
        s = export_compact_embedding(args.model, args.capture, args.out)
        print(
            f"[embedding] wrote {s['out']}: {s['shape'][0]} x {s['shape'][1]} F32, {s['bytes']} bytes "
            f"in {s['seconds']:.1f}s; row norms min {s['row_norm_min']:.4f} median "
            f"{s['row_norm_median']:.4f} max {s['row_norm_max']:.4f} (unk row {s['unk_row_norm']:.4f})",
            flush=True,
        )

    return run_cli(action, (OSError,))


if __name__ == "__main__":
    sys.exit(main())
