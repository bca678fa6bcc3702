"""Teacher perplexity from llama.cpp (llama-cpp-python) on the windows a capture uses.

The corpus is tokenized by llama.cpp itself (whole file, no BOS, no special-token
parsing), cut into the same windows as the capture tool, and each window is
evaluated as ``[BOS] + window tokens`` with logits for every position. Perplexity is
exp of the mean negative log-probability over scored positions.

Usage: python3 -m tools.capture.llama_reference --model M.gguf --corpus wiki.test.raw
       --max-tokens 50000 [--window 128] [--stride 128] [--compare-capture DIR]

With ``--compare-capture`` the per-position log-probabilities are also compared with the
``true_logprob`` of a capture taken with the same corpus, window, stride and max-tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .capture_format import CaptureReader
from .corpus import read_text
from .errors import MissingFileError, ParameterMismatchError, run_cli
from .windows import plan_windows


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) per row of float32 logits [N, V] (max-shifted float32 log-sum-exp)."""
    row_max = logits.max(axis=1, keepdims=True)
    lse = row_max[:, 0] + np.log(np.exp(logits - row_max).sum(axis=1))
    return logits[np.arange(len(targets)), targets].astype(np.float64) - lse


def load_llama(model: Path, n_ctx: int, n_threads: int, vocab_only: bool = False):
    """Open the GGUF with llama-cpp-python."""
    from llama_cpp import Llama

    if not Path(model).is_file():
        raise MissingFileError(f"GGUF model not found: {model}")
    return Llama(
        model_path=str(model),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=n_threads,
        logits_all=not vocab_only,
        vocab_only=vocab_only,
        verbose=False,
    )


def llama_tokenize(llm, text: str) -> np.ndarray:
    """llama.cpp token ids of ``text`` (no BOS, special tokens not parsed)."""
    return np.asarray(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), dtype=np.int32)


def reference(args) -> dict:
    """Evaluate the windows with llama.cpp and return a summary dict."""
    stride = args.stride or args.window
    llm = load_llama(args.model, n_ctx=args.window + 1, n_threads=args.threads)
    ids = llama_tokenize(llm, read_text(args.corpus))
    tokens = ids if args.max_tokens is None else ids[: args.max_tokens]
    windows = plan_windows(len(tokens), args.window, stride)
    if args.max_windows is not None:
        windows = windows[: args.max_windows]
    bos = llm.token_bos()
    logprobs, scored, targets = [], [], []
    t0 = time.time()
    for n_done, w in enumerate(windows, 1):
        window_tokens = tokens[w.start : w.start + w.length]
        llm.reset()
        llm.eval([bos] + [int(t) for t in window_tokens])
        logprobs.append(log_softmax_at(np.asarray(llm.scores[: w.length]), window_tokens))
        scored.append(np.arange(w.length) >= w.first_scored)
        targets.append(window_tokens)
        if n_done % 25 == 0 or n_done == len(windows):
            positions = sum(len(x) for x in logprobs)
            print(
                f"[reference] {n_done}/{len(windows)} windows, {positions / (time.time() - t0):.1f} tokens/s",
                flush=True,
            )
    lp = np.concatenate(logprobs)
    mask = np.concatenate(scored)
    elapsed = time.time() - t0
    summary = {
        "engine": "llama-cpp-python",
        "corpus": Path(args.corpus).name,
        "tokens_total": int(len(ids)),
        "tokens_used": int(len(tokens)),
        "windows": len(windows),
        "positions": int(len(lp)),
        "scored": int(mask.sum()),
        "perplexity": float(np.exp(-lp[mask].mean())),
        "seconds": round(elapsed, 1),
        "tokens_per_second": round(len(lp) / elapsed, 1),
    }
    if args.compare_capture:
        summary["comparison"] = compare_with_capture(args, len(tokens), lp, np.concatenate(targets), mask)
    return summary


def compare_with_capture(
    args, tokens_used: int, lp: np.ndarray, targets: np.ndarray, mask: np.ndarray
) -> dict:
    """Compare reference log-probs with the first ``len(lp)`` rows of a capture."""
    reader = CaptureReader(args.compare_capture)
    m = reader.manifest
    expected = (args.window, args.stride or args.window, tokens_used, Path(args.corpus).name)
    found = (m["window"], m["stride"], m["corpus"]["tokens_used"], m["corpus"]["file"])
    if expected != found:
        raise ParameterMismatchError(
            f"capture has (window, stride, tokens, corpus) {found}, reference {expected}"
        )
    ours, our_targets = [], []
    rows = 0
    for shard in reader.shards():
        ours.append(shard["true_logprob"])
        our_targets.append(shard["target"])
        rows += len(shard["target"])
        if rows >= len(lp):
            break
    ours_lp = np.concatenate(ours)[: len(lp)].astype(np.float64)
    if not np.array_equal(np.concatenate(our_targets)[: len(lp)], targets):
        raise ParameterMismatchError("capture targets differ from llama.cpp's tokens")
    diff = np.abs(ours_lp - lp)
    capture_ppl = float(np.exp(-ours_lp[mask].mean()))
    reference_ppl = float(np.exp(-lp[mask].mean()))
    return {
        "capture": str(args.compare_capture),
        "positions": int(len(lp)),
        "capture_perplexity": capture_ppl,
        "reference_perplexity": reference_ppl,
        "relative_difference": capture_ppl / reference_ppl - 1.0,
        "max_abs_logprob_difference": float(diff.max()),
        "mean_abs_logprob_difference": float(diff.mean()),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the reference tool."""
    p = argparse.ArgumentParser(prog="python3 -m tools.capture.llama_reference")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-capture", type=Path, default=None, help="compare with this capture's log-probs")
    return p


def main(argv=None) -> int:
    """Command-line entry point; prints the summary as JSON."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: print(json.dumps(reference(args), indent=1)), (ValueError,))


if __name__ == "__main__":
    sys.exit(main())
