"""Run the Gemma 3 teacher over a corpus and write a capture directory.

Usage: python3 -m tools.capture --model M.gguf --corpus wiki.valid.raw --out DIR [options]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .capture_format import DTYPES, FORMAT_NAME, FORMAT_VERSION, CaptureWriter, load_manifest, to_f16
from .compact import build_compact_vocab, collapse_logits, compact_index_map
from .corpus import TokenizedCorpus, tokenize_corpus
from .errors import CorruptInputError, ParameterMismatchError, run_cli
from .forward import Gemma3, array_module
from .gguf_model import GgufFile, GgufVocab, ModelConfig
from .hashing import sha256_file
from .tokenizer import SpmTokenizer
from .windows import Window, pending_windows, plan_windows, total_positions, window_arrays

COMPACT_SIZE = 4096
PROGRESS_SECONDS = 10.0
LOGIT_ROWS = 256  # rows of full-vocabulary logits materialised at once (256 x 262144 x 4 B)


def parse_layers(text: str) -> list[int]:
    """Parse a comma-separated layer list ('' -> [])."""
    return sorted({int(x) for x in text.split(",") if x.strip()})


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the capture tool."""
    p = argparse.ArgumentParser(prog="python3 -m tools.capture", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="Gemma 3 GGUF file")
    p.add_argument("--corpus", type=Path, required=True, help="raw UTF-8 text file")
    p.add_argument("--out", type=Path, required=True, help="capture directory")
    p.add_argument("--window", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--stride", type=int, default=None, help="tokens between window starts (default: window)")
    p.add_argument("--max-tokens", type=int, default=None, help="use the first N tokens of the corpus")
    p.add_argument(
        "--layers", type=parse_layers, default=[6, 12, 18], help="hidden-state layers (default 6,12,18)"
    )
    p.add_argument("--qkv-layers", type=parse_layers, default=[], help="layers whose q/k/v are captured")
    p.add_argument("--positions-per-shard", type=int, default=8192)
    p.add_argument(
        "--compact-vocab-from", type=Path, default=None, help="reuse this capture's compact vocabulary"
    )
    p.add_argument(
        "--compact-vocab-tokens",
        type=int,
        default=None,
        help="build the compact vocabulary from the first N tokens of the corpus (N >= the "
        "captured tokens; default: the captured tokens), e.g. when a short capture holds too "
        "few distinct tokens",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-windows", type=int, default=4, help="windows per forward pass")
    p.add_argument("--restart", action="store_true", help="discard an existing capture in --out")
    return p


def compact_vocab_entry(
    args, corpus: TokenizedCorpus, vocab_size: int, model_sha: str, vocab_tokens=None
) -> dict:
    """Build the compact vocabulary from this corpus (or from ``vocab_tokens``, a longer prefix
    of it), or copy it from a capture of the same model."""
    if args.compact_vocab_from is None:
        source_tokens = corpus.tokens if vocab_tokens is None else vocab_tokens
        ids = build_compact_vocab(source_tokens, COMPACT_SIZE, vocab_size)
        source = "self" if vocab_tokens is None else f"self, first {len(vocab_tokens)} tokens"
        token_ids = [int(i) for i in ids]
    else:
        other = load_manifest(args.compact_vocab_from)
        if other["model"]["sha256"] != model_sha:
            raise ParameterMismatchError(f"{args.compact_vocab_from} was captured with another model file")
        token_ids = list(other["compact_vocab"]["token_ids"])
        source = str(args.compact_vocab_from.resolve())
        if other["compact_vocab"]["size"] != COMPACT_SIZE or len(token_ids) != COMPACT_SIZE - 1:
            raise CorruptInputError(
                f"{args.compact_vocab_from}: compact vocabulary is not of size {COMPACT_SIZE}"
            )
    return {"size": COMPACT_SIZE, "unk_index": COMPACT_SIZE - 1, "token_ids": token_ids, "source": source}


def manifest_parameters(
    args,
    model_path: Path,
    model_sha: str,
    config: ModelConfig,
    vocab: GgufVocab,
    corpus: TokenizedCorpus,
    compact: dict,
    xp,
) -> dict:
    """The content-defining manifest entries of this run."""
    for layer in args.layers + args.qkv_layers:
        if not 1 <= layer <= config.n_layers:
            raise ValueError(
                f"layer {layer} outside 1..{config.n_layers} (layer L = after the first L blocks)"
            )
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": {"file": model_path.name, "sha256": model_sha, **config.as_manifest()},
        "tokenizer": {
            "source": "gguf",
            "model": vocab.model,
            "vocab_size": len(vocab.tokens),
            "bos_id": vocab.bos_id,
            "eos_id": vocab.eos_id,
            "add_bos": True,
        },
        "corpus": corpus.as_manifest(),
        "window": args.window,
        "stride": args.stride,
        "layers": args.layers,
        "qkv_layers": args.qkv_layers,
        "dtypes": dict(DTYPES),
        "compact_vocab": compact,
        "engine": {
            "name": "htfr-tools-capture",
            "version": f"{__version__} ({xp.__name__} {xp.__version__})",
            "device": args.device,
        },
    }


class ShardBuffer:
    """Accumulate per-position arrays and hand out shards of a fixed number of positions."""

    def __init__(self, positions_per_shard: int):
        self.size = positions_per_shard
        self.parts: list[dict[str, np.ndarray]] = []
        self.count = 0

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        self.parts.append(arrays)
        self.count += arrays["window"].shape[0]

    def take(self, force: bool = False):
        """Return one full shard (or, with ``force``, whatever is left), else None."""
        if self.count == 0 or (self.count < self.size and not force):
            return None
        merged = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        n = min(self.size, self.count)
        shard = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self.count -= n
        self.parts = [rest] if self.count else []
        return shard


def run_batch(
    model: Gemma3,
    windows: list[Window],
    corpus: TokenizedCorpus,
    bos_id: int,
    args,
    compact_ids_dev,
    compact_map: np.ndarray,
) -> dict[str, np.ndarray]:
    """Forward a batch of equal-length windows; return per-position arrays in capture order."""
    xp = model.xp
    rows = [window_arrays(corpus.tokens, w, bos_id) for w in windows]
    out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    tokens = np.stack([r["token"] for r in rows])  # [B, T]
    fwd = model.forward(tokens, hidden_layers=tuple(args.layers), qkv_layers=tuple(args.qkv_layers))
    n = tokens.size
    final = fwd.final.reshape(n, -1)
    targets = xp.asarray(out["target"])
    true_lp = np.empty(n, dtype=np.float32)
    compact_lp = np.empty((n, COMPACT_SIZE), dtype=np.float16)
    for lo in range(0, n, LOGIT_ROWS):
        hi = min(n, lo + LOGIT_ROWS)
        t, c = collapse_logits(xp, model.logits(final[lo:hi]), targets[lo:hi], compact_ids_dev)
        true_lp[lo:hi] = _host(t)
        compact_lp[lo:hi] = to_f16(_host(c))
    out["target_compact"] = compact_map[out["target"]]
    out["true_logprob"] = true_lp
    out["compact_logprobs"] = compact_lp
    for layer, h in fwd.hidden.items():
        out[f"hidden.{layer}"] = to_f16(_host(h).reshape(n, -1))
    for layer in args.qkv_layers:
        out[f"q.{layer}"] = to_f16(_host(fwd.q[layer]).reshape(n, *fwd.q[layer].shape[2:]))
        out[f"k.{layer}"] = to_f16(_host(fwd.k[layer]).reshape(n, *fwd.k[layer].shape[2:]))
        out[f"v.{layer}"] = to_f16(_host(fwd.v[layer]).reshape(n, *fwd.v[layer].shape[2:]))
    return out


def _host(array) -> np.ndarray:
    """Copy a device array to host memory (no-op for numpy)."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def batches(windows: list[Window], size: int):
    """Consecutive groups of at most ``size`` windows of equal length."""
    group: list[Window] = []
    for w in windows:
        if group and (len(group) == size or w.length != group[0].length):
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def capture(args) -> Path:
    """Run a capture as configured by parsed command-line ``args``; return the directory."""
    args.stride = args.stride or args.window
    for name in ("max_tokens", "positions_per_shard", "batch_windows", "compact_vocab_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    xp = array_module(args.device)
    t0 = time.time()
    gguf = GgufFile(args.model)
    config, vocab = gguf.config(), gguf.vocab()
    tokenizer = SpmTokenizer.from_gguf(vocab)
    corpus = tokenize_corpus(args.corpus, tokenizer, args.max_tokens)
    windows = plan_windows(int(corpus.tokens.shape[0]), args.window, args.stride)
    model_sha = sha256_file(args.model)
    vocab_tokens = None
    if args.compact_vocab_tokens is not None:
        if args.compact_vocab_from is not None:
            raise ValueError("--compact-vocab-tokens and --compact-vocab-from exclude each other")
        if args.compact_vocab_tokens < corpus.tokens.shape[0]:
            raise ValueError(
                f"--compact-vocab-tokens ({args.compact_vocab_tokens}) must be at least the "
                f"captured tokens ({corpus.tokens.shape[0]})"
            )
        vocab_tokens = tokenize_corpus(args.corpus, tokenizer, args.compact_vocab_tokens).tokens
    compact = compact_vocab_entry(args, corpus, config.vocab_size, model_sha, vocab_tokens)
    params = manifest_parameters(args, Path(args.model), model_sha, config, vocab, corpus, compact, xp)
    writer = CaptureWriter(args.out, params, restart=args.restart)
    total = total_positions(windows)
    print(
        f"[capture] {corpus.path.name}: {corpus.tokens_total} tokens, using {corpus.tokens.shape[0]}; "
        f"{len(windows)} windows, {total} positions; setup {time.time() - t0:.1f}s",
        flush=True,
    )
    if writer.complete:
        print(f"[capture] {args.out} is already complete", flush=True)
        return args.out
    done = writer.positions
    if done:
        print(f"[capture] resuming after {len(writer.shards)} shards ({done} positions)", flush=True)
    model = Gemma3(gguf, args.device)
    compact_ids_dev = xp.asarray(np.asarray(compact["token_ids"], dtype=np.int64))
    compact_map = compact_index_map(np.asarray(compact["token_ids"]), config.vocab_size)
    buffer = ShardBuffer(args.positions_per_shard)
    pending = pending_windows(windows, done)
    skips = {w.index: skip for w, skip in pending}
    start_time, processed, last_report = time.time(), 0, 0.0
    for group in batches([w for w, _ in pending], args.batch_windows):
        arrays = run_batch(model, group, corpus, vocab.bos_id, args, compact_ids_dev, compact_map)
        skip = skips[group[0].index]
        if skip:  # the first window was partly stored before an interruption
            arrays = {k: v[skip:] for k, v in arrays.items()}
        buffer.add(arrays)
        processed += arrays["window"].shape[0]
        while (shard := buffer.take()) is not None:
            writer.write_shard(shard)
        elapsed = time.time() - start_time
        if elapsed - last_report >= PROGRESS_SECONDS:
            last_report = elapsed
            print(
                f"[capture] {done + processed}/{total} positions, {processed / elapsed:.1f} tokens/s, "
                f"{elapsed:.0f}s",
                flush=True,
            )
    if (shard := buffer.take(force=True)) is not None:
        writer.write_shard(shard)
    writer.finish()
    elapsed = time.time() - start_time
    print(
        f"[capture] complete: {writer.positions} positions in {len(writer.shards)} shards; "
        f"{processed} new positions in {elapsed:.1f}s ({processed / max(elapsed, 1e-9):.1f} tokens/s); "
        f"wall {time.time() - t0:.1f}s",
        flush=True,
    )
    return args.out


def main(argv=None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: capture(args), (ValueError,))


if __name__ == "__main__":
    sys.exit(main())
