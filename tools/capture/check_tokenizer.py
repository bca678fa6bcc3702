"""Check that the GGUF-vocabulary tokenizer matches llama.cpp's token for token.

Each corpus file is tokenized as one text (no BOS, no special-token parsing) by
``SpmTokenizer`` and by llama-cpp-python (vocab_only); the two id sequences must be
identical. Prints one JSON line per file and exits non-zero on any difference.

Usage: python3 -m tools.capture.check_tokenizer --model M.gguf wiki.valid.raw wiki.test.raw
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .corpus import read_text
from .errors import CaptureError
from .gguf_model import GgufFile
from .llama_reference import llama_tokenize, load_llama
from .tokenizer import SpmTokenizer


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Summary of two id sequences: lengths, equality, first differing index."""
    n = min(len(ours), len(theirs))
    differing = np.flatnonzero(ours[:n] != theirs[:n])
    first = int(differing[0]) if len(differing) else (n if len(ours) != len(theirs) else None)
    return {
        "tokens_ours": int(len(ours)),
        "tokens_llama": int(len(theirs)),
        "identical": first is None,
        "first_difference": first,
    }


def main(argv=None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python3 -m tools.capture.check_tokenizer")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("corpus", type=Path, nargs="+")
    args = p.parse_args(argv)
    try:
        tokenizer = SpmTokenizer.from_gguf(GgufFile(args.model).vocab())
        llm = load_llama(args.model, n_ctx=512, n_threads=1, vocab_only=True)
        ok = True
        for path in args.corpus:
            text = read_text(path)
            t0 = time.time()
            ours = np.asarray(tokenizer.encode(text), dtype=np.int32)
            t1 = time.time()
            theirs = llama_tokenize(llm, text)
            t2 = time.time()
            result = {
                "file": path.name,
                **compare(ours, theirs),
                "seconds_ours": round(t1 - t0, 2),
                "seconds_llama": round(t2 - t1, 2),
            }
            ok &= result["identical"]
            print(json.dumps(result), flush=True)
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
