#!/usr/bin/env python3
"""PyTorch inference speed of the teacher model (Gemma 3 270M): the yardstick for our own engine.

The teacher is built from its configuration in code with random weights (the same architecture,
shapes and dtypes as the real checkpoint; nothing is downloaded or read from disk), then timed on
one device with CUDA events after warm-up. Medians and p99 are written as JSON, as the other
bench/torch_*.py baselines do.

Measurements
  1. Batch-1 decode step latency with a KV cache. A prompt of --context random tokens is
     prefilled, then single-token decode steps (one forward with the cache and one new token,
     full-vocabulary logits) are timed one by one. Every mode times the same token positions:
     context + warmup ... context + warmup + iters - 1 (the first --warmup steps after the prefill
     are run and discarded). The decode tokens are pre-generated random ids, not sampled.
       eager         plain transformers path, DynamicCache.
       eager_static  plain transformers path, StaticCache (the cache the graph modes use).
       cuda_graph    the decode step captured once in a torch.cuda.CUDAGraph over a StaticCache and
                     replayed; token id and position are copied into static input buffers first.
       compile       the same decode step under torch.compile(mode="reduce-overhead") over a
                     StaticCache (inductor + CUDA graphs on a GPU).
     The two graph modes pass their attention masks in explicitly, computed inside the step from
     the position buffer (a captured step cannot rebuild host-side mask arguments per token), so
     they need context + warmup + iters <= the sliding window; otherwise they are recorded as
     unsupported. Before timing, each static-cache mode's first decode logits are checked against
     the eager (DynamicCache) logits at the same positions ("check" in the JSON). A mode that
     fails (capture or compile error, no CUDA device) is recorded with its error, not fatal.
  2. Prefill throughput: one forward (no cache) over a (batch, --seq) block of random tokens for
     each of --batches; tokens/s = batch * seq / median time. By default only the last
     position's logits are computed (logits_to_keep=1, what a prefill that feeds decoding needs);
     --prefill-logits all computes every position's logits. OOM is recorded per batch size.
  3. Memory: parameter count and bytes; torch.cuda.max_memory_allocated for each decode mode and
     each prefill batch (peak statistics reset in between), with the allocation before each run.

Usage:
  python3 bench/torch_teacher.py --json out/torch_teacher.json            # GPU, bf16
  python3 bench/torch_teacher.py --dtype fp32 --batches 64,256 --json t.json
  python3 bench/torch_teacher.py --quick --device cpu --json /tmp/t.json   # tiny smoke test

Needs torch and transformers (Gemma3ForCausalLM, Gemma3TextConfig, StaticCache).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import inspect
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

# The shared output helpers of the benchmarks (this directory is on sys.path when run as a script).
from torch_baseline import fmt_rate, git_commit, is_oom, write_json

# Gemma 3 270M, text model. Values from the gemma3.* metadata of the teacher GGUF
# (teacher/gemma-3-270m-q4_k_m.gguf), except where a comment says otherwise:
#   gemma3.block_count 18, embedding_length 640, feed_forward_length 2048,
#   attention.head_count 4, attention.head_count_kv 1, attention.key_length 256 (= value_length),
#   attention.layer_norm_rms_epsilon 1e-6, attention.sliding_window 512, rope.freq_base 1e6,
#   context_length 32768; tokenizer.ggml.tokens has 262144 entries; the GGUF has no output.weight
#   (the LM head is tied to token_embd).
GEMMA3_270M = {
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "sliding_window": 512,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,  # global (full-attention) layers: gemma3.rope.freq_base
    # Local (sliding-window) layers: the GGUF has no gemma3.rope.freq_base_swa key, so the Gemma 3
    # default of 10000 applies (llama.cpp's rope_freq_base_train_swa default; the Gemma 3
    # reference configuration's rope_local_base_freq).
    "rope_local_base_freq": 10_000.0,
    # Not in the GGUF: llama.cpp scales queries by 1/sqrt(key_length) for every Gemma 3 size but
    # 27B, i.e. query_pre_attn_scalar = head_dim = 256.
    "query_pre_attn_scalar": 256,
    # Not in the GGUF: Gemma 3 interleaves 5 sliding-window layers with 1 global layer (llama.cpp
    # loads the gemma3 swa pattern as 6: layer il is global iff il % 6 == 5).
    "sliding_window_pattern": 6,
    # Gemma 3 uses the tanh approximation of GELU in its gated MLP; no logit soft-capping (the GGUF
    # has no final_logit_softcapping key).
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "tie_word_embeddings": True,
}

# --quick: a tiny model of the same architecture (both layer types present) for smoke tests.
QUICK_MODEL = dict(GEMMA3_270M, vocab_size=512, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                   sliding_window=64, max_position_embeddings=256, query_pre_attn_scalar=32,
                   sliding_window_pattern=2)

# Run-size defaults (full run, --quick run); an option given on the command line wins.
DEFAULTS = {
    "context": (128, 8), "warmup": (20, 2), "iters": (200, 6),
    "seq": (128, 8), "batches": ("64,256,1024", "2,4"),
    "prefill_warmup": (3, 1), "prefill_iters": (10, 3),
}
CHECK_STEPS = 4  # decode steps whose logits are compared with the eager (DynamicCache) path
CHECK_TOL = {"bf16": 3e-2, "fp32": 1e-3}  # max |diff| / max |reference logit|
DECODE_MODES = ("eager", "eager_static", "cuda_graph", "compile")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH",
                 "cudnn": "CUDNN_ATTENTION"}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def layer_types(n_layers: int, pattern: int) -> list[str]:
    """Gemma 3 layer schedule: within each group of `pattern` layers the last is global."""
    return ["full_attention" if (i % pattern) == pattern - 1 else "sliding_attention"
            for i in range(n_layers)]


def make_config(spec: dict, attn: str):
    """A Gemma3TextConfig for `spec`, written for the installed transformers version: recent
    versions take rope_parameters per layer type and layer_types; older ones rope_theta,
    rope_local_base_freq and sliding_window_pattern."""
    from transformers import Gemma3TextConfig

    params = inspect.signature(Gemma3TextConfig.__init__).parameters
    kw = {k: spec[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
        "sliding_window", "max_position_embeddings", "query_pre_attn_scalar", "hidden_activation",
        "final_logit_softcapping", "attn_logit_softcapping", "tie_word_embeddings")}
    types = layer_types(spec["num_hidden_layers"], spec["sliding_window_pattern"])
    if "rope_parameters" in params:
        kw["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": spec["rope_theta"]},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": spec["rope_local_base_freq"]},
        }
    else:
        kw["rope_theta"] = spec["rope_theta"]
        kw["rope_local_base_freq"] = spec["rope_local_base_freq"]
    if "layer_types" in params:
        kw["layer_types"] = types
    elif "sliding_window_pattern" in params:
        kw["sliding_window_pattern"] = spec["sliding_window_pattern"]
    config = Gemma3TextConfig(**kw)
    config._attn_implementation = attn
    return config


def config_summary(config) -> dict:
    d = config.to_dict()
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
            "sliding_window", "max_position_embeddings", "query_pre_attn_scalar",
            "hidden_activation", "final_logit_softcapping", "attn_logit_softcapping",
            "tie_word_embeddings", "rope_parameters", "rope_theta", "rope_local_base_freq",
            "layer_types", "sliding_window_pattern")
    out = {k: d[k] for k in keys if k in d}
    out["attn_implementation"] = getattr(config, "_attn_implementation", None)
    return out


def build_model(spec: dict, attn: str, dtype: torch.dtype, device: torch.device, seed: int):
    """Gemma3ForCausalLM with random weights, created directly on `device`, cast to `dtype`."""
    from transformers import Gemma3ForCausalLM

    config = make_config(spec, attn)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        model = Gemma3ForCausalLM(config)
    model = model.to(dtype=dtype).eval()
    model.requires_grad_(False)
    return model, config


def forward_features(model) -> dict:
    """Which optional forward arguments this transformers version has."""
    params = inspect.signature(model.forward).parameters
    logits_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return {"cache_position": "cache_position" in params, "logits_kw": logits_kw}


def make_static_cache(config, max_len: int, device: torch.device, dtype: torch.dtype):
    """StaticCache for batch 1 and `max_len` positions. The constructor changed across
    transformers versions (older: max_batch_size/batch_size, device, dtype; newer: config and
    max_cache_len, storage allocated lazily on the first update), so its signature is read here."""
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kw = {"max_cache_len": max_len}
    if "config" in params:
        kw["config"] = config
    for name in ("max_batch_size", "batch_size"):
        if name in params:
            kw[name] = 1
            break
    if "device" in params:
        kw["device"] = device
    if "dtype" in params:
        kw["dtype"] = dtype
    return StaticCache(**kw)


def static_cache_signature() -> str:
    from transformers import StaticCache

    return str(inspect.signature(StaticCache.__init__))


# --------------------------------------------------------------------------------------------
# Timing helpers (as bench/torch_baseline.py)
# --------------------------------------------------------------------------------------------


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return float("nan")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_vals)))
    return sorted_vals[rank - 1]


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_each(fn, n: int, device: torch.device) -> list[float]:
    """Times fn(0) ... fn(n-1) one by one, in ms: CUDA events around each call after a device
    synchronise (wall clock on CPU), so each time is one call's latency including launch."""
    cuda = device.type == "cuda"
    times = []
    for i in range(n):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    sync(device)
    return times


def stats(times: list[float], items_per_call: int, key: str) -> dict:
    st = sorted(times)
    med = statistics.median(st)
    return {
        "median_ms": med,
        "p99_ms": percentile(st, 99),
        "min_ms": st[0],
        "mean_ms": statistics.fmean(st),
        key: items_per_call / (med / 1e3) if med > 0 else None,
        "iters": len(st),
    }


def reset_memory(device: torch.device) -> int | None:
    """Frees cached blocks, resets the peak statistics; returns the bytes allocated now."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_memory(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def sdpa_context(name: str):
    """Restricts scaled_dot_product_attention to one backend ('auto': PyTorch's own choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def error_text(exc: BaseException, limit: int = 2000) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------


class Decode:
    """Shared state of the batch-1 decode runs."""

    def __init__(self, model, config, args, device, dtype):
        self.model = model
        self.config = config
        self.device = device
        self.dtype = dtype
        self.attn = args.attn
        self.feat = forward_features(model)
        self.context = args.context
        self.warmup = args.warmup
        self.iters = args.iters
        self.steps = args.warmup + args.iters  # decode steps after each prefill
        # Capture / compile warm-up before the measured run (positions are reused after a reset).
        self.pre_steps = max(3, min(args.warmup, 5))
        self.max_len = self.context + max(self.steps, self.pre_steps + 1, CHECK_STEPS)
        g = torch.Generator(device="cpu")
        g.manual_seed(args.seed + 1)
        vocab = config.vocab_size
        self.prompt = torch.randint(0, vocab, (1, self.context), generator=g).to(device)
        n = max(self.steps, self.pre_steps + 1, CHECK_STEPS)
        self.tokens = torch.randint(0, vocab, (n,), generator=g).to(device)
        self.positions = torch.arange(self.context, self.context + n, device=device)
        self.prompt_positions = torch.arange(self.context, device=device)
        self.reference = None  # (CHECK_STEPS, vocab) fp32 logits of the eager path

    # -- plain transformers calls --

    def prefill(self, cache):
        """Prefills the prompt into `cache` (None: a new DynamicCache); returns the cache."""
        kw = {"input_ids": self.prompt, "past_key_values": cache, "use_cache": True,
              "position_ids": self.prompt_positions.view(1, -1)}
        if self.feat["cache_position"]:
            kw["cache_position"] = self.prompt_positions
        if self.feat["logits_kw"]:
            kw[self.feat["logits_kw"]] = 1
        out = self.model(**kw)
        return out.past_key_values if cache is None else cache

    def step(self, cache, i):
        """One plain decode step at token/position i; returns (logits (1, vocab), cache)."""
        kw = {"input_ids": self.tokens[i:i + 1].view(1, 1), "past_key_values": cache,
              "use_cache": True, "position_ids": self.positions[i:i + 1].view(1, 1)}
        if self.feat["cache_position"]:
            kw["cache_position"] = self.positions[i:i + 1]
        out = self.model(**kw)
        return out.logits[:, -1], out.past_key_values

    # -- the decode step with explicit masks, for capture and compile --

    def masked_step_fn(self, cache):
        """fn(ids (1, 1), pos (1,)) -> logits (1, vocab): one decode step whose attention masks
        are computed on the device from `pos`, so that a captured or compiled step stays correct
        at every position. Valid while the cache has not reached the sliding window (then the
        sliding and global layers see the same absolute positions and the same mask)."""
        model = self.model
        feat = self.feat
        kv_idx = torch.arange(self.max_len, device=self.device).view(1, 1, 1, -1)
        sdpa = self.attn == "sdpa"
        neg = torch.finfo(self.dtype).min

        def fn(ids, pos):
            allowed = kv_idx <= pos.view(1, 1, 1, 1)
            if sdpa:
                mask = allowed
            else:
                mask = torch.where(allowed, 0.0, neg).to(self.dtype)
            kw = {"input_ids": ids, "position_ids": pos.view(1, 1), "past_key_values": cache,
                  "use_cache": True,
                  "attention_mask": {"full_attention": mask, "sliding_attention": mask}}
            if feat["cache_position"]:
                kw["cache_position"] = pos
            return model(**kw).logits[:, -1]

        return fn

    def static_modes_supported(self) -> str | None:
        window = self.config.sliding_window
        if window is not None and self.max_len > window:
            return (f"needs context + max(warmup + iters, {self.pre_steps + 1}) = {self.max_len} "
                    f"<= sliding window {window}: the explicit masks do not model a rolling "
                    f"sliding-window cache")
        return None

    def check(self, logits: torch.Tensor) -> dict:
        """Compares (CHECK_STEPS, vocab) logits with the eager reference."""
        ref = self.reference
        diff = (logits.float() - ref).abs().max().item()
        scale = ref.abs().max().item()
        rel = diff / scale if scale > 0 else diff
        tol = CHECK_TOL["bf16" if self.dtype == torch.bfloat16 else "fp32"]
        return {"steps": CHECK_STEPS, "max_abs_diff": diff, "max_abs_ref": scale,
                "rel_diff": rel, "tolerance": tol, "ok": bool(rel <= tol)}


def decode_eager(D: Decode) -> dict:
    # Reference logits for the static-cache modes' checks (first CHECK_STEPS decode steps).
    cache = D.prefill(None)
    ref = []
    for i in range(CHECK_STEPS):
        logits, cache = D.step(cache, i)
        ref.append(logits.float().clone())
    D.reference = torch.cat(ref, 0)
    del cache

    holder = {}

    def run(i):
        holder["logits"], holder["cache"] = D.step(holder["cache"], i)

    holder["cache"] = D.prefill(None)
    times = time_each(run, D.steps, D.device)
    return {"cache": "DynamicCache", "times": times}


def decode_eager_static(D: Decode) -> dict:
    cache = make_static_cache(D.config, D.max_len, D.device, D.dtype)
    D.prefill(cache)
    for i in range(D.pre_steps):
        D.step(cache, i)
    cache.reset()
    D.prefill(cache)
    logits = torch.cat([D.step(cache, i)[0].float() for i in range(CHECK_STEPS)], 0)
    check = D.check(logits)
    cache.reset()
    D.prefill(cache)
    times = time_each(lambda i: D.step(cache, i), D.steps, D.device)
    return {"cache": "StaticCache", "max_cache_len": D.max_len, "check": check, "times": times}


def decode_cuda_graph(D: Decode) -> dict:
    if D.device.type != "cuda":
        return {"supported": False, "error": "unsupported: CUDA graphs need a CUDA device"}
    why = D.static_modes_supported()
    if why:
        return {"supported": False, "error": "unsupported: " + why}
    cache = make_static_cache(D.config, D.max_len, D.device, D.dtype)
    D.prefill(cache)  # also allocates a lazily initialised cache before the capture
    ids = D.tokens[0:1].view(1, 1).clone()
    pos = D.positions[0:1].clone()
    fn = D.masked_step_fn(cache)

    def load(i):
        ids.copy_(D.tokens[i:i + 1].view(1, 1))
        pos.copy_(D.positions[i:i + 1])

    # Warm-up on a side stream (lazy initialisation, cuBLAS workspaces), then capture.
    side = torch.cuda.Stream(D.device)
    side.wait_stream(torch.cuda.current_stream(D.device))
    with torch.cuda.stream(side):
        for i in range(D.pre_steps):
            load(i)
            fn(ids, pos)
    torch.cuda.current_stream(D.device).wait_stream(side)
    torch.cuda.synchronize(D.device)
    graph = torch.cuda.CUDAGraph()
    load(D.pre_steps)
    t0 = time.perf_counter()
    with torch.cuda.graph(graph):
        out = fn(ids, pos)
    torch.cuda.synchronize(D.device)
    capture_s = time.perf_counter() - t0

    def run(i):
        load(i)
        graph.replay()

    cache.reset()
    D.prefill(cache)
    logits = []
    for i in range(CHECK_STEPS):
        run(i)
        logits.append(out.float().clone())
    check = D.check(torch.cat(logits, 0))
    cache.reset()
    D.prefill(cache)
    times = time_each(run, D.steps, D.device)
    del graph
    return {"cache": "StaticCache", "max_cache_len": D.max_len, "capture_s": capture_s,
            "check": check, "times": times}


def dynamo_unique_graphs() -> int | None:
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - informational only
        return None


def decode_compile(D: Decode) -> dict:
    why = D.static_modes_supported()
    if why:
        return {"supported": False, "error": "unsupported: " + why}
    import torch._dynamo

    torch._dynamo.reset()
    graphs0 = dynamo_unique_graphs()
    cache = make_static_cache(D.config, D.max_len, D.device, D.dtype)
    D.prefill(cache)  # eager; allocates a lazily initialised cache outside the compiled region
    ids = D.tokens[0:1].view(1, 1).clone()
    pos = D.positions[0:1].clone()
    compiled = torch.compile(D.masked_step_fn(cache), mode="reduce-overhead")
    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)

    def run(i):
        ids.copy_(D.tokens[i:i + 1].view(1, 1))
        pos.copy_(D.positions[i:i + 1])
        if mark is not None:
            mark()
        return compiled(ids, pos)

    t0 = time.perf_counter()
    for i in range(D.pre_steps):
        run(i)
    sync(D.device)
    compile_s = time.perf_counter() - t0

    cache.reset()
    D.prefill(cache)
    check = D.check(torch.cat([run(i).float().clone() for i in range(CHECK_STEPS)], 0))
    cache.reset()
    D.prefill(cache)
    times = time_each(run, D.steps, D.device)
    graphs1 = dynamo_unique_graphs()
    out = {"cache": "StaticCache", "max_cache_len": D.max_len, "first_calls_s": compile_s,
           "first_calls": D.pre_steps, "check": check, "times": times}
    if graphs0 is not None and graphs1 is not None:
        out["dynamo_unique_graphs"] = graphs1 - graphs0
    del compiled
    torch._dynamo.reset()
    return out


DECODE_FNS = {"eager": decode_eager, "eager_static": decode_eager_static,
              "cuda_graph": decode_cuda_graph, "compile": decode_compile}


def run_decode(D: Decode, modes: list[str], device: torch.device, sdpa: str) -> dict:
    out = {
        "batch": 1,
        "context": D.context,
        "warmup_steps": D.warmup,
        "timed_steps": D.iters,
        "positions": [D.context + D.warmup, D.context + D.steps - 1],
        "logits": "full vocabulary, last position",
        "tokens": "pre-generated random ids",
        "modes": {},
    }
    # The eager run provides the reference logits the other modes are checked against.
    order = ["eager"] + [m for m in modes if m != "eager"]
    for mode in order:
        print(f"[torch_teacher] decode {mode} ...", file=sys.stderr, flush=True)
        before = reset_memory(device)
        try:
            with torch.no_grad(), sdpa_context(sdpa):
                res = DECODE_FNS[mode](D)
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            res = {"supported": False, "error": "oom" if is_oom(exc) else error_text(exc)}
            if not is_oom(exc):
                traceback.print_exc(file=sys.stderr)
        if mode not in modes:  # eager ran only for the reference
            continue
        times = res.pop("times", None)
        if times is not None:
            res = {"supported": True, **stats(times[D.warmup:], 1, "tokens_per_s"), **res}
        if device.type == "cuda":
            res["mem_before_bytes"] = before
            res["peak_mem_bytes"] = peak_memory(device)
        out["modes"][mode] = res
        gc.collect()
    return out


# --------------------------------------------------------------------------------------------
# Prefill
# --------------------------------------------------------------------------------------------


def run_prefill(model, config, args, device) -> list[dict]:
    feat = forward_features(model)
    logits_kw = feat["logits_kw"] if args.prefill_logits == "last" else None
    results = []
    g = torch.Generator(device="cpu")
    g.manual_seed(args.seed + 2)
    for batch in args.batches:
        entry = {"batch": batch, "seq": args.seq, "tokens": batch * args.seq}
        print(f"[torch_teacher] prefill batch={batch} seq={args.seq} ...", file=sys.stderr,
              flush=True)
        before = reset_memory(device)
        ids = None
        try:
            ids = torch.randint(0, config.vocab_size, (batch, args.seq), generator=g).to(device)
            kw = {"input_ids": ids, "use_cache": False}
            if logits_kw:
                kw[logits_kw] = 1

            def run(i):
                model(**kw)

            with torch.no_grad(), sdpa_context(args.sdpa_backend):
                for _ in range(args.prefill_warmup):
                    run(0)
                times = time_each(run, args.prefill_iters, device)
            entry.update(stats(times, batch * args.seq, "tokens_per_s"))
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            if is_oom(exc):
                entry["error"] = "oom"
            else:
                entry["error"] = error_text(exc)
                traceback.print_exc(file=sys.stderr)
        if device.type == "cuda":
            entry["mem_before_bytes"] = before
            entry["peak_mem_bytes"] = peak_memory(device)
        del ids
        results.append(entry)
        reset_memory(device)
    return results


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt_mib(v):
    return "-" if v is None else f"{v / 2**20:.0f}"


def print_table(doc):
    dec = doc["decode"]
    print(f"{doc['model']} on {doc['device']}, {doc['settings']['dtype']}, "
          f"{doc['params']['count'] / 1e6:.1f}M parameters ({fmt_mib(doc['params']['bytes'])} MiB)")
    print(f"decode, batch 1, context {dec['context']}, timed positions "
          f"{dec['positions'][0]}..{dec['positions'][1]}:")
    hdr = f"  {'mode':13} {'median ms':>10} {'p99 ms':>9} {'tokens/s':>9} {'peak MiB':>9}  note"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    for mode, r in dec["modes"].items():
        if r.get("supported"):
            note = ""
            if "check" in r:
                c = r["check"]
                note = f"check {'ok' if c['ok'] else 'FAILED'} (rel {c['rel_diff']:.1e})"
            print(f"  {mode:13} {r['median_ms']:>10.3f} {r['p99_ms']:>9.3f} "
                  f"{fmt_rate(r['tokens_per_s']):>9} {fmt_mib(r.get('peak_mem_bytes')):>9}  {note}")
        else:
            err = r.get("error", "")
            print(f"  {mode:13} {'-':>10} {'-':>9} {'-':>9} {'-':>9}  "
                  f"{err if len(err) <= 90 else err[:90] + ' ...'}")
    print(f"prefill, seq {doc['settings']['seq']}, logits: {doc['settings']['prefill_logits']}:")
    hdr = f"  {'batch':>6} {'tokens':>8} {'median ms':>10} {'p99 ms':>9} {'tokens/s':>9} {'peak MiB':>9}"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    for r in doc["prefill"]:
        head = f"  {r['batch']:>6} {r['tokens']:>8} "
        if "median_ms" in r:
            print(head + f"{r['median_ms']:>10.3f} {r['p99_ms']:>9.3f} "
                         f"{fmt_rate(r['tokens_per_s']):>9} {fmt_mib(r.get('peak_mem_bytes')):>9}")
        else:
            err = r.get("error", "")
            print(head + f"{'-':>10} {'-':>9} {'-':>9} {fmt_mib(r.get('peak_mem_bytes')):>9}  "
                         f"{err if len(err) <= 60 else err[:60] + ' ...'}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_list(s, cast=str):
    return [cast(v.strip()) for v in s.split(",") if v.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="PyTorch (transformers) inference speed of the Gemma 3 270M teacher, "
                    "random weights: batch-1 decode latency and prefill throughput.")
    ap.add_argument("--device", default="cuda", help="torch device (cuda, cuda:1, cpu)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="model dtype")
    ap.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                    help="transformers attention implementation")
    ap.add_argument("--sdpa-backend", choices=("auto",) + tuple(SDPA_BACKENDS), default="auto",
                    help="restrict scaled_dot_product_attention to one backend (with --attn sdpa; "
                         "default auto: PyTorch's choice). The static-cache decode modes pass an "
                         "attention mask, which the flash backend does not take")
    ap.add_argument("--context", type=int, default=None,
                    help="prompt tokens prefilled before the decode steps (default 128)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="decode steps run and discarded after each prefill (default 20)")
    ap.add_argument("--iters", type=int, default=None, help="timed decode steps (default 200)")
    ap.add_argument("--modes", default=",".join(DECODE_MODES),
                    help="comma list of decode modes: " + ",".join(DECODE_MODES))
    ap.add_argument("--batches", default=None,
                    help="comma list of prefill batch sizes (default 64,256,1024; '' = none)")
    ap.add_argument("--seq", type=int, default=None, help="prefill sequence length (default 128)")
    ap.add_argument("--prefill-warmup", type=int, default=None,
                    help="untimed prefill forwards per batch size (default 3)")
    ap.add_argument("--prefill-iters", type=int, default=None,
                    help="timed prefill forwards per batch size (default 10)")
    ap.add_argument("--prefill-logits", choices=("last", "all"), default="last",
                    help="prefill computes the last position's logits only (logits_to_keep=1, "
                         "default) or every position's")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--quick", action="store_true",
                    help="tiny 2-layer model and short runs: a smoke test, also on CPU")
    ap.add_argument("--json", default="", help="JSON output path ('' = none)")
    ap.add_argument("--commit", default=None,
                    help="commit to record (default: git rev-parse --short HEAD, else "
                         "$HTFR_COMMIT, else 'unknown')")
    args = ap.parse_args(argv)

    q = 1 if args.quick else 0
    for name, vals in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, vals[q])
    args.batches = parse_list(args.batches, int)
    modes = parse_list(args.modes)
    bad = [m for m in modes if m not in DECODE_MODES]
    if bad:
        sys.exit(f"torch_teacher: unknown decode mode(s) {bad} (known: {', '.join(DECODE_MODES)})")
    if args.context < 1 or args.iters < 1 or args.warmup < 0 or args.seq < 1:
        sys.exit("torch_teacher: --context, --iters, --seq >= 1 and --warmup >= 0")
    if any(b < 1 for b in args.batches) or args.prefill_iters < 1 or args.prefill_warmup < 0:
        sys.exit("torch_teacher: --batches >= 1, --prefill-iters >= 1, --prefill-warmup >= 0")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_teacher: no CUDA device (use --device cpu with --quick for a smoke test)")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    dtype = DTYPES[args.dtype]
    spec = QUICK_MODEL if args.quick else GEMMA3_270M

    import transformers

    model, config = build_model(spec, args.attn, dtype, device, args.seed)
    feat = forward_features(model)
    n_params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if args.prefill_logits == "last":
        prefill_logits = (f"last ({feat['logits_kw']}=1)" if feat["logits_kw"]
                          else "all (this transformers version has no logits_to_keep)")
    else:
        prefill_logits = "all"

    doc = {
        "impl": "torch",
        "bench": "teacher",
        "model": "gemma-3-270m (random weights)" if not args.quick else "gemma3-tiny (--quick)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpu_memory_bytes": (torch.cuda.get_device_properties(device).total_memory
                             if device.type == "cuda" else None),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": args.commit if args.commit is not None else git_commit(),
        "settings": {
            "dtype": args.dtype, "sdpa_backend": args.sdpa_backend,
            "attn_implementation": getattr(config, "_attn_implementation",
                                                                args.attn),
            "quick": args.quick, "seed": args.seed, "grad_mode": "no_grad",
            "context": args.context, "decode_warmup": args.warmup, "decode_iters": args.iters,
            "decode_modes": modes, "batches": args.batches, "seq": args.seq,
            "prefill_warmup": args.prefill_warmup, "prefill_iters": args.prefill_iters,
            "prefill_logits": prefill_logits, "prefill_cache": "none (use_cache=False)",
            "forward_has_cache_position": feat["cache_position"],
            "static_cache_signature": static_cache_signature(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "check_steps": CHECK_STEPS,
        },
        "model_config": config_summary(config),
        "params": {"count": n_params, "bytes": param_bytes},
    }

    D = Decode(model, config, args, device, dtype)
    doc["decode"] = run_decode(D, modes, device, args.sdpa_backend)
    del D
    doc["prefill"] = run_prefill(model, config, args, device) if args.batches else []

    print_table(doc)
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
