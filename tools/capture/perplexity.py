"""Teacher perplexities and compact-vocabulary coverage of a capture.

- teacher perplexity: exp(mean of -true_logprob over scored positions);
- truncated perplexity: exp(mean of -compact_logprobs[target_compact]) over scored positions
  (the teacher scored on the compact classes, unk included);
- coverage: fraction of scored targets whose compact class is not unk;
- saturated: per stored F16 tensor, how many values sit at +-65504 (saturated on write),
  split into rows at window position 0 and rows at later positions.

Usage: python3 -m tools.capture.perplexity CAPTURE_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .capture_format import F16_MAX, CaptureReader
from .errors import CaptureError, run_cli


def capture_perplexity(directory: Path, require_complete: bool = True) -> dict:
    """Compute the summary figures of a capture directory."""
    reader = CaptureReader(directory, require_complete=require_complete)
    unk = reader.manifest["compact_vocab"]["unk_index"]
    nll = nll_compact = 0.0
    scored = covered = 0
    saturated: dict[str, list[int]] = {}
    for shard in reader.shards():
        first_rows = shard["position"] == 0
        for name, array in shard.items():
            if array.dtype == np.float16:
                hits = (np.abs(array) >= F16_MAX).reshape(len(first_rows), -1).sum(axis=1)
                counts = saturated.setdefault(name, [0, 0])
                counts[0] += int(hits[first_rows].sum())
                counts[1] += int(hits[~first_rows].sum())
        mask = shard["scored"].astype(bool)
        target_compact = shard["target_compact"][mask]
        nll -= float(shard["true_logprob"][mask].astype(np.float64).sum())
        picked = np.take_along_axis(
            shard["compact_logprobs"][mask], target_compact[:, None].astype(np.int64), 1
        )
        nll_compact -= float(picked.astype(np.float64).sum())
        scored += int(mask.sum())
        covered += int((target_compact != unk).sum())
    if scored == 0:
        raise CaptureError(f"{directory}: no scored positions")
    return {
        "capture": str(directory),
        "corpus": reader.manifest["corpus"]["file"],
        "positions": reader.manifest["positions"],
        "scored": scored,
        "teacher_perplexity": float(np.exp(nll / scored)),
        "truncated_perplexity": float(np.exp(nll_compact / scored)),
        "coverage": covered / scored,
        "saturated": {
            name: {"position_0": first, "later_positions": later}
            for name, (first, later) in sorted(saturated.items())
            if first or later
        },
    }


def main(argv=None) -> int:
    """Command-line entry point; prints the summary as JSON."""
    p = argparse.ArgumentParser(prog="python3 -m tools.capture.perplexity")
    p.add_argument("capture", type=Path)
    p.add_argument("--allow-incomplete", action="store_true", help="also read a capture still being written")
    args = p.parse_args(argv)
    return run_cli(lambda: print(json.dumps(
        capture_perplexity(args.capture, not args.allow_incomplete), indent=1)))


if __name__ == "__main__":
    sys.exit(main())
