#!/usr/bin/env python3
"""Naive PyTorch HTFR baseline: the yardstick the CUDA benchmarks are compared against.

Why this exists: DESIGN §7 states htfr's speed targets as ratios to "naive PyTorch" on the same
GPU, in the same run. This script is that naive implementation -- the HTFR forward pass and an
autograd training step written plainly with torch ops -- timed with CUDA events and written as
JSON that bench/make_results.py joins with the C++ benchmark's JSON.

Semantics mirrored from the library (include/htfr/pool.hpp, src/detail/field_math.hpp, white
paper §1-3), softmax weighting and linear interpolation:
  normals  (N, D) unit rows      offsets (N)      dneg < 0 < dpos (N)      tau (N)
  controls (N, 3, M), stored column-wise like the pool: controls[i, j, m] = C_i[m, j]
  dist  = x @ normals.T + offsets                           (B, N)
  idx   = top-K smallest |dist| (torch.topk(-|dist|, K))    (B, K)
  w     = softmax(-|d| / tau[idx]) over the K active tensors
  dc    = clamp(d, dneg, dpos); dc >= 0: t = dc/dpos, alpha = (0, 1-t, t)
                                dc <  0: t = dc/dneg, alpha = (t, 1-t, 0)
  y     = sum_k w_k sum_j alpha_kj controls[idx_k, j, :]
The blend is written as one batched product of the (B, 1, 3K) coefficients w_k*alpha_kj with the
gathered (B, 3K, M) controls -- algebraically L_k = C alpha_k then y = sum_k w_k L_k, without
materialising L.

Training step: cross-entropy of y against random class indices (reduction 'sum' by default, the
library's Reduction::sum), loss.backward() through the formula above (autograd, including the
path through the locality weights), then plain SGD under torch.no_grad(): controls at lr 0.05,
normals and offsets at lr 0.005, then normals renormalised to unit length.

Precisions:
  fp32  fp32 parameters and inputs, fp32 GEMM with TF32 disabled.
  bf16  fp32 master parameters cast to bf16 on every call (DESIGN §7, "naive PyTorch, fp32 master
        params cast to bf16 per call"): bf16 distance GEMM (fp32 result), bf16 control gather;
        the blend is accumulated in fp32 (--bf16-blend fp32, default: the gathered bf16 controls are
        up-cast) or done by a bf16 batched GEMM that accumulates in fp32 inside cuBLAS
        (--bf16-blend bf16).

Usage:
  python3 bench/torch_baseline.py --shapes S1,S2,BIG --rows 256,1024,4096 \\
      --precisions fp32,bf16 --ops forward,train --warmup 5 --iters 20 --out torch.json
  python3 bench/torch_baseline.py --check     # formula check on a tiny shape (CPU, + CUDA if any)

Only torch and the Python standard library are used.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# DESIGN §7 benchmark shapes.
SHAPES = {
    "S1": {"D": 16384, "N": 8192, "M": 1024, "K": 16},
    "S2": {"D": 4096, "N": 16384, "M": 4096, "K": 24},
    "BIG": {"D": 4096, "N": 131072, "M": 4096, "K": 32},
}
# Shapes too large for the autograd step (its gathered controls and their gradient): forward only.
FORWARD_ONLY = {"BIG"}

# Random initialisation of the benchmark pools. The timings do not depend on these values; they
# only keep every code path live (distances on both sides of 0, some clamped, finite losses).
OFFSET_SCALE = 0.5
BAND = 1.0
TAU = 1.0
CONTROL_SCALE = 0.02


def disable_tf32() -> str:
    """fp32 matmuls in true fp32: the 'fp32' precision must not silently use TF32 tensor cores.

    PyTorch >= 2.9 has the `fp32_precision` settings and may raise when they are mixed with the
    legacy `allow_tf32` flags, so only one family is used. Returns a description for the JSON."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "ieee"
        return f"cuda.matmul.fp32_precision={matmul.fp32_precision}"
    matmul.allow_tf32 = False
    return f"cuda.matmul.allow_tf32={matmul.allow_tf32}"


# --------------------------------------------------------------------------------------------
# The naive HTFR
# --------------------------------------------------------------------------------------------


class Pool:
    """The HTFR parameters as plain tensors (fp32 masters, or any float dtype for checks)."""

    def __init__(self, normals, offsets, dneg, dpos, tau, controls):
        self.normals = normals  # (N, D)
        self.offsets = offsets  # (N,)
        self.dneg = dneg  # (N,)
        self.dpos = dpos  # (N,)
        self.tau = tau  # (N,)
        self.controls = controls  # (N, 3, M)

    def trainable(self):
        return (self.normals, self.offsets, self.controls)


def make_pool(N, D, M, device, seed, dtype=torch.float32, offset_scale=OFFSET_SCALE, band=BAND,
              tau=TAU, control_scale=CONTROL_SCALE, random_bands=False) -> Pool:
    """Random pool: Gaussian normals renormalised to unit rows, Gaussian offsets and controls.
    With random_bands, bands and temperatures are drawn per tensor (used by --check)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    normals = torch.randn(N, D, generator=g, device=device, dtype=dtype)
    normals /= torch.linalg.vector_norm(normals, dim=1, keepdim=True)
    offsets = torch.randn(N, generator=g, device=device, dtype=dtype) * offset_scale
    if random_bands:
        dneg = -(0.05 + 0.4 * torch.rand(N, generator=g, device=device, dtype=dtype))
        dpos = 0.05 + 0.4 * torch.rand(N, generator=g, device=device, dtype=dtype)
        taus = 0.5 + torch.rand(N, generator=g, device=device, dtype=dtype)
    else:
        dneg = torch.full((N,), -band, device=device, dtype=dtype)
        dpos = torch.full((N,), band, device=device, dtype=dtype)
        taus = torch.full((N,), tau, device=device, dtype=dtype)
    controls = torch.randn(N, 3, M, generator=g, device=device, dtype=dtype) * control_scale
    return Pool(normals, offsets, dneg, dpos, taus, controls)


def htfr_forward(x, pool: Pool, K: int, precision: str = "fp32", bf16_blend: str = "fp32"):
    """y (B, M) for input rows x (B, D). Differentiable in normals, offsets and controls.

    precision 'fp32' computes in the parameters' own dtype (fp32 for the benchmark, fp64 in the
    checks); 'bf16' casts the masters to bf16 on every call for the GEMM and the gather."""
    B = x.shape[0]
    M = pool.controls.shape[2]
    if precision == "bf16":
        bf = torch.bfloat16
        dist = (x.to(bf) @ pool.normals.to(bf).t()).float() + pool.offsets  # (B, N) fp32
        ctrl = pool.controls.to(bf)  # (N, 3, M) bf16 copy, made per call
    elif precision == "fp32":
        dist = x @ pool.normals.t() + pool.offsets
        ctrl = pool.controls
    else:
        raise ValueError(f"unknown precision {precision!r}")

    _, idx = torch.topk(-dist.abs(), K, dim=1)  # (B, K): K smallest |d|
    d = torch.gather(dist, 1, idx)  # (B, K)
    w = torch.softmax(-d.abs() / pool.tau[idx], dim=1)  # (B, K)

    lo = pool.dneg[idx]
    hi = pool.dpos[idx]
    dc = torch.clamp(d, min=lo, max=hi)
    pos = dc >= 0
    t = torch.where(pos, dc / hi, dc / lo)
    zero = torch.zeros_like(t)
    alpha = torch.stack((torch.where(pos, zero, t), 1.0 - t, torch.where(pos, t, zero)), dim=2)

    coef = (w.unsqueeze(2) * alpha).reshape(B, 1, 3 * K)  # w_k * alpha_kj
    C = ctrl[idx].reshape(B, 3 * K, M)  # gathered controls (B, K, 3, M) -> (B, 3K, M)
    if precision == "bf16":
        if bf16_blend == "fp32":
            C = C.float()
        else:
            coef = coef.to(torch.bfloat16)
    y = torch.bmm(coef, C).squeeze(1)  # (B, M)
    return y.float() if y.dtype == torch.bfloat16 else y


def train_step(x, target, pool: Pool, K: int, precision: str, bf16_blend: str, lr: float,
               lr_geometry: float, reduction: str):
    """One naive autograd training step: CE loss, backward, SGD, renormalise normals."""
    for p in pool.trainable():
        p.grad = None
    y = htfr_forward(x, pool, K, precision, bf16_blend)
    loss = F.cross_entropy(y, target, reduction=reduction)
    loss.backward()
    with torch.no_grad():
        pool.controls.add_(pool.controls.grad, alpha=-lr)
        pool.normals.add_(pool.normals.grad, alpha=-lr_geometry)
        pool.offsets.add_(pool.offsets.grad, alpha=-lr_geometry)
        norm = torch.linalg.vector_norm(pool.normals, dim=1, keepdim=True)
        pool.normals.div_(norm.clamp_min_(1e-12))
    return loss


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return float("nan")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_vals)))
    return sorted_vals[rank - 1]


def time_calls(fn, warmup: int, iters: int, device: torch.device):
    """Per-call times in ms: CUDA events around each call after warm-up (wall clock on CPU).
    fn(i) runs call number i."""
    cuda = device.type == "cuda"
    for i in range(warmup):
        fn(i)
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for i in range(iters):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn(warmup + i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(warmup + i)
            times.append((time.perf_counter() - t0) * 1e3)
    if cuda:
        torch.cuda.synchronize(device)
    return times


def run_case(op, dims, precision, rows, args, device):
    """Times one (op, shape, precision, rows) case; returns the stats dict."""
    N, D, M, K = dims["N"], dims["D"], dims["M"], dims["K"]
    seed = args.seed
    pool = make_pool(N, D, M, device, seed)
    g = torch.Generator(device=device)
    g.manual_seed(seed + 1)
    # A few pre-generated batches of random normal rows (never zeros), rotated between calls.
    xs = [torch.randn(rows, D, generator=g, device=device) for _ in range(args.batches)]
    ts = [torch.randint(0, M, (rows,), generator=g, device=device) for _ in range(args.batches)]

    if op == "forward":
        def fn(i):
            with torch.no_grad():
                htfr_forward(xs[i % len(xs)], pool, K, precision, args.bf16_blend)
    elif op == "train":
        for p in pool.trainable():
            p.requires_grad_(True)

        def fn(i):
            train_step(xs[i % len(xs)], ts[i % len(ts)], pool, K, precision, args.bf16_blend,
                       args.lr, args.lr_geometry, args.reduction)
    else:
        raise ValueError(f"unknown op {op!r}")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_calls(fn, args.warmup, args.iters, device)
    out = {}
    if op == "train":
        # Sanity of the last step (outside the timed region): parameters still finite.
        finite = all(bool(torch.isfinite(p).all()) for p in pool.trainable())
        out["params_finite"] = finite
    st = sorted(times)
    med = statistics.median(st)
    out.update({
        "median_ms": med,
        "min_ms": st[0],
        "p90_ms": percentile(st, 90),
        "rows_per_s": rows / (med / 1e3) if med > 0 else None,
        "iters": len(st),
    })
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def is_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or a library's allocation failure reported as RuntimeError."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "cublas_status_alloc_failed" in text)


def git_commit() -> str:
    """HTFR_COMMIT when set (a copied tree may carry stale git metadata), else git's HEAD."""
    if os.environ.get("HTFR_COMMIT"):
        return os.environ["HTFR_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                           text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    except Exception:
        pass
    return "unknown"


def write_json(path, doc):
    """Writes doc to a regular file atomically (temporary + rename); a device or pipe such as
    /dev/stdout is written through, never replaced."""
    path = Path(path)
    text = json.dumps(doc, indent=2) + "\n"
    if path.exists() and not path.is_file():
        with open(path, "w") as f:
            f.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def fmt_rate(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def print_table(results):
    sw = max([5] + [len(str(r.get("shape", ""))) for r in results])
    hdr = (f"{'op':8} {'shape':{sw}} {'prec':5} {'rows':>6} {'median ms':>10} {'min ms':>9} "
           f"{'p90 ms':>9} {'rows/s':>8}  note")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        note = r.get("error") or r.get("skipped") or ""
        head = f"{r['op']:8} {r['shape']:{sw}} {r['precision']:5} {str(r.get('rows', '-')):>6} "
        if "median_ms" in r:
            print(head + f"{r['median_ms']:>10.3f} {r['min_ms']:>9.3f} {r['p90_ms']:>9.3f} "
                         f"{fmt_rate(r.get('rows_per_s')):>8}  {note}")
        else:
            print(head + f"{'-':>10} {'-':>9} {'-':>9} {'-':>8}  {note}")


def parse_list(s, cast=str):
    return [cast(v.strip()) for v in s.split(",") if v.strip()]


def resolve_shape(name):
    """(name, dims) for a DESIGN shape (S1, S2, BIG) or a custom 'DxNxMxK' such as 64x256x32x8."""
    if name in SHAPES:
        return name, SHAPES[name]
    parts = name.lower().split("x")
    if len(parts) == 4 and all(p.isdigit() and int(p) > 0 for p in parts):
        D, N, M, K = (int(p) for p in parts)
        if K > N:
            sys.exit(f"torch_baseline: shape {name}: K must not exceed N")
        return f"D{D}-N{N}-M{M}-K{K}", {"D": D, "N": N, "M": M, "K": K}
    sys.exit(f"torch_baseline: unknown shape {name!r} (S1, S2, BIG, or DxNxMxK)")


def run_bench(args):
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("torch_baseline: CUDA is not available (use --device cpu or --check)")
        if device.index is not None:
            torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
    tf32_setting = disable_tf32()

    shapes = [resolve_shape(s) for s in parse_list(args.shapes)]
    precisions = parse_list(args.precisions)
    for p in precisions:
        if p not in ("fp32", "bf16"):
            sys.exit(f"torch_baseline: unknown precision {p!r} (fp32, bf16)")
    ops = parse_list(args.ops)
    for o in ops:
        if o not in ("forward", "train"):
            sys.exit(f"torch_baseline: unknown op {o!r} (forward, train)")
    rows_list = parse_list(args.rows, int)
    if not rows_list or any(r <= 0 for r in rows_list):
        sys.exit("torch_baseline: --rows needs positive integers")
    if args.iters < 1 or args.warmup < 0 or args.batches < 1:
        sys.exit("torch_baseline: --iters >= 1, --warmup >= 0, --batches >= 1")

    doc = {
        "impl": "torch",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "settings": {
            "warmup": args.warmup, "iters": args.iters, "batches": args.batches,
            "seed": args.seed, "lr": args.lr, "lr_geometry": args.lr_geometry,
            "reduction": args.reduction, "bf16_blend": args.bf16_blend,
            "fp32_matmul": tf32_setting,
            "weighting": "softmax", "interpolation": "linear", "loss": "cross_entropy",
        },
        "results": [],
    }

    for shape, dims in shapes:
        for precision in precisions:
            for op in ops:
                for rows in rows_list:
                    entry = {"op": op, "shape": shape, "precision": precision, "rows": rows,
                             "N": dims["N"], "D": dims["D"], "M": dims["M"], "K": dims["K"]}
                    if op == "train" and shape in FORWARD_ONLY:
                        entry["skipped"] = "forward only at this shape"
                        doc["results"].append(entry)
                        continue
                    print(f"[torch_baseline] {op} {shape} {precision} rows={rows} ...",
                          file=sys.stderr, flush=True)
                    failure = None
                    try:
                        entry.update(run_case(op, dims, precision, rows, args, device))
                    except Exception as exc:  # noqa: BLE001 - OOM is recorded, the rest re-raised
                        if not is_oom(exc):
                            raise
                        failure = "out of memory"
                    if failure is not None:
                        entry["error"] = failure
                        print(f"[torch_baseline]   {failure}", file=sys.stderr, flush=True)
                    # Free everything the case allocated before the next one.
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        torch.cuda.empty_cache()
                    doc["results"].append(entry)
                    if args.out:
                        write_json(args.out, doc)  # keep partial results if a later case dies

    if args.out:
        write_json(args.out, doc)
    print(f"device {doc['device']}  torch {doc['torch']}  cuda {doc['cuda']}  "
          f"commit {doc['commit']}")
    print_table(doc["results"])
    if args.out:
        print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# --check: the formula against a plain loop, on a tiny shape
# --------------------------------------------------------------------------------------------


def loop_reference(X, P, K):
    """Direct per-row, per-tensor transcription in float64 Python arithmetic.
    X: list of rows; P: dict of Python lists. Returns (Y, active) with active[b] = [(i, d, w,
    alpha)]."""
    N = len(P["offsets"])
    M = len(P["controls"][0][0])
    Y, active = [], []
    for x in X:
        dists = []
        for i in range(N):
            n = P["normals"][i]
            dists.append(sum(n[j] * x[j] for j in range(len(x))) + P["offsets"][i])
        order = sorted(range(N), key=lambda i: abs(dists[i]))[:K]
        logits = [-abs(dists[i]) / P["tau"][i] for i in order]
        mx = max(logits)
        ex = [math.exp(v - mx) for v in logits]
        s = sum(ex)
        y = [0.0] * M
        act = []
        for k, i in enumerate(order):
            w = ex[k] / s
            d = dists[i]
            dneg, dpos = P["dneg"][i], P["dpos"][i]
            dc = min(max(d, dneg), dpos)
            if dc >= 0:
                t = dc / dpos
                alpha = (0.0, 1.0 - t, t)
            else:
                t = dc / dneg
                alpha = (t, 1.0 - t, 0.0)
            C = P["controls"][i]  # C[j][m] = C_i[m, j]
            for m in range(M):
                L = alpha[0] * C[0][m] + alpha[1] * C[1][m] + alpha[2] * C[2][m]
                y[m] += w * L
            act.append((i, d, w, alpha))
        Y.append(y)
        active.append(act)
    return Y, active


def loop_ce_loss(X, T, P, K):
    Y, _ = loop_reference(X, P, K)
    total = 0.0
    for y, t in zip(Y, T):
        mx = max(y)
        lse = mx + math.log(sum(math.exp(v - mx) for v in y))
        total += lse - y[t]
    return total


def pool_lists(pool: Pool):
    return {k: getattr(pool, k).detach().cpu().double().tolist()
            for k in ("normals", "offsets", "dneg", "dpos", "tau", "controls")}


def well_separated(X, P, K, margin):
    """True if no row has a near-tie at the K-th distance and no active distance sits within
    `margin` of 0 or a band edge (so fp32/fp64 and finite differences agree on every branch)."""
    N = len(P["offsets"])
    for x in X:
        dists = [sum(n[j] * x[j] for j in range(len(x))) + P["offsets"][i]
                 for i, n in enumerate(P["normals"])]
        a = sorted(abs(v) for v in dists)
        if K < N and a[K] - a[K - 1] < margin:
            return False
        for i in sorted(range(N), key=lambda i: abs(dists[i]))[:K]:
            d = dists[i]
            if abs(d) < margin or abs(d - P["dneg"][i]) < margin or abs(d - P["dpos"][i]) < margin:
                return False
    return True


def max_abs_diff(a, b):
    return max(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb))


def check_on(device: torch.device) -> list[str]:
    """Runs every check on one device; returns failure messages (empty when all pass)."""
    failures = []

    def expect(ok, msg):
        status = "ok  " if ok else "FAIL"
        print(f"  [{status}] {msg}")
        if not ok:
            failures.append(f"{device}: {msg}")

    B, N, D, M, K = 7, 24, 8, 5, 6
    margin = 1e-3
    # Pick the first seed whose data has no near-ties (deterministic).
    for seed in range(1000):
        pool = make_pool(N, D, M, device, seed, offset_scale=0.6, control_scale=1.0,
                         random_bands=True)
        g = torch.Generator(device=device)
        g.manual_seed(10_000 + seed)
        x = torch.randn(B, D, generator=g, device=device)
        P = pool_lists(pool)
        X = x.double().cpu().tolist()
        if well_separated(X, P, K, margin):
            break
    else:
        expect(False, "found no well-separated random case")
        return failures
    target = torch.randint(0, M, (B,), generator=g, device=device)
    T = target.cpu().tolist()
    print(f"  device {device}, B={B} N={N} D={D} M={M} K={K}, seed {seed}")

    Yref, active = loop_reference(X, P, K)
    sides = {"neg": 0, "pos": 0, "clamped": 0}
    for act in active:
        for i, d, _, _ in act:
            sides["pos" if d >= 0 else "neg"] += 1
            if d < P["dneg"][i] or d > P["dpos"][i]:
                sides["clamped"] += 1
    print(f"  active pairs: {sides['neg']} negative side, {sides['pos']} positive side, "
          f"{sides['clamped']} clamped at a band edge")
    expect(sides["neg"] > 0 and sides["pos"] > 0 and sides["clamped"] > 0,
           "negative side, positive side and clamping all exercised")

    # 1. fp32 forward matches the loop to 1e-5.
    with torch.no_grad():
        y = htfr_forward(x, pool, K, "fp32")
    diff = max_abs_diff(y.double().cpu().tolist(), Yref)
    expect(tuple(y.shape) == (B, M) and y.dtype == torch.float32,
           f"fp32 forward shape {tuple(y.shape)}, dtype {y.dtype}")
    expect(diff <= 1e-5, f"fp32 forward vs loop: max |diff| = {diff:.3e} (<= 1e-5)")

    # 2. fp64 forward matches the loop to 1e-12 (the formula, not fp32 rounding).
    pool64 = Pool(*(getattr(pool, k).double() for k in
                    ("normals", "offsets", "dneg", "dpos", "tau", "controls")))
    x64 = x.double()
    with torch.no_grad():
        y64 = htfr_forward(x64, pool64, K, "fp32")
    diff64 = max_abs_diff(y64.cpu().tolist(), Yref)
    expect(diff64 <= 1e-12, f"fp64 forward vs loop: max |diff| = {diff64:.3e} (<= 1e-12)")

    # 3. Controls gradient of the summed CE equals sum_b w * g_b alpha^T (white paper §3.2).
    for p in pool64.trainable():
        p.requires_grad_(True)
    loss64 = F.cross_entropy(htfr_forward(x64, pool64, K, "fp32"), target, reduction="sum")
    loss64.backward()
    expect(abs(loss64.item() - loop_ce_loss(X, T, P, K)) <= 1e-10, "fp64 CE loss vs loop")
    gref = [[[0.0] * M for _ in range(3)] for _ in range(N)]
    for b, (yb, act) in enumerate(zip(Yref, active)):
        mx = max(yb)
        e = [math.exp(v - mx) for v in yb]
        s = sum(e)
        gb = [v / s for v in e]
        gb[T[b]] -= 1.0
        for i, _, w, alpha in act:
            for j in range(3):
                for m in range(M):
                    gref[i][j][m] += w * alpha[j] * gb[m]
    gdiff = max(abs(u - v) for a, r in zip(pool64.controls.grad.cpu().tolist(), gref)
                for ra, rr in zip(a, r) for u, v in zip(ra, rr))
    expect(gdiff <= 1e-12, f"controls gradient vs analytic: max |diff| = {gdiff:.3e}")

    # 4. Geometry gradients (autograd, exact incl. the weight path) vs central differences of the
    #    loop loss.
    eps = 1e-6
    fd_off = []
    for i in range(N):
        Pp = {k: (list(v) if k == "offsets" else v) for k, v in P.items()}
        Pp["offsets"][i] = P["offsets"][i] + eps
        lp = loop_ce_loss(X, T, Pp, K)
        Pp["offsets"][i] = P["offsets"][i] - eps
        lm = loop_ce_loss(X, T, Pp, K)
        fd_off.append((lp - lm) / (2 * eps))
    odiff = max(abs(u - v) for u, v in zip(pool64.offsets.grad.cpu().tolist(), fd_off))
    expect(odiff <= 1e-6, f"offsets gradient vs finite differences: max |diff| = {odiff:.3e}")
    rng = random.Random(seed)
    used = sorted({i for act in active for i, *_ in act})
    picks = [(rng.choice(used), rng.randrange(D)) for _ in range(12)]
    ng = pool64.normals.grad.cpu().tolist()
    ndiff = 0.0
    for i, j in picks:
        Pp = dict(P)
        Pp["normals"] = [list(r) for r in P["normals"]]
        Pp["normals"][i][j] = P["normals"][i][j] + eps
        lp = loop_ce_loss(X, T, Pp, K)
        Pp["normals"][i][j] = P["normals"][i][j] - eps
        lm = loop_ce_loss(X, T, Pp, K)
        ndiff = max(ndiff, abs(ng[i][j] - (lp - lm) / (2 * eps)))
    expect(ndiff <= 1e-6, f"normals gradient vs finite differences (12 entries): "
                          f"max |diff| = {ndiff:.3e}")

    # 5. The fp32 training step: the SGD update is exactly -lr * grad, normals stay unit length.
    for prec in ("fp32", "bf16"):
        tp = make_pool(N, D, M, device, seed, offset_scale=0.6, control_scale=1.0,
                       random_bands=True)
        for p in tp.trainable():
            p.requires_grad_(True)
        before = [p.detach().clone() for p in tp.trainable()]
        loss = train_step(x, target, tp, K, prec, "fp32", 0.05, 0.005, "sum")
        grads = [p.grad.detach().clone() for p in tp.trainable()]
        with torch.no_grad():
            n_expect = before[0] - 0.005 * grads[0]
            n_expect /= torch.linalg.vector_norm(n_expect, dim=1, keepdim=True)
            ok = (torch.allclose(tp.normals, n_expect, atol=1e-6, rtol=1e-5)
                  and torch.allclose(tp.offsets, before[1] - 0.005 * grads[1], atol=1e-6)
                  and torch.allclose(tp.controls, before[2] - 0.05 * grads[2], atol=1e-6))
            unit = float((torch.linalg.vector_norm(tp.normals, dim=1) - 1).abs().max())
        expect(ok and math.isfinite(loss.item()), f"{prec} train step applies SGD "
                                                  f"(loss {loss.item():.4f})")
        expect(unit <= 1e-5, f"{prec} train step keeps unit normals (max |norm-1| {unit:.1e})")
        if prec == "fp32":
            # The fp32 loss equals the loop loss at the starting parameters.
            lref = loop_ce_loss(X, T, P, K)
            expect(abs(loss.item() - lref) <= 1e-4 * max(1.0, abs(lref)),
                   f"fp32 train-step loss {loss.item():.6f} vs loop {lref:.6f}")

    # 6. bf16 forward: runs, is finite, and is close to the loop where it selects the same set.
    for blend in ("fp32", "bf16"):
        with torch.no_grad():
            yb = htfr_forward(x, pool, K, "bf16", blend)
            bf = torch.bfloat16
            dist = (x.to(bf) @ pool.normals.to(bf).t()).float() + pool.offsets
            _, idxb = torch.topk(-dist.abs(), K, dim=1)
        rows_same = [set(row) == {i for i, *_ in act}
                     for act, row in zip(active, idxb.cpu().tolist())]
        ybl = yb.double().cpu().tolist()
        same_diff = max((abs(u - v) for ok, ra, rb in zip(rows_same, ybl, Yref) if ok
                         for u, v in zip(ra, rb)), default=0.0)
        expect(yb.dtype == torch.float32 and bool(torch.isfinite(yb).all()),
               f"bf16 forward (blend {blend}) is finite fp32; "
               f"{sum(rows_same)}/{B} rows select the fp64 active set")
        # Where the active set is the same, only bf16 rounding of x, normals, distances and
        # controls (and, for a bf16 blend, of the coefficients and the output) remains:
        # |C| ~ 1, narrow bands amplify distance rounding, so a loose 0.1.
        expect(same_diff <= 0.1, f"bf16 forward (blend {blend}) within 0.1 of the loop on those "
                                 f"rows (max |diff| {same_diff:.2e})")
    return failures


def run_check(args):
    disable_tf32()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    failures = []
    for dev in devices:
        print(f"check on {dev}:")
        failures += check_on(dev)
    if failures:
        print("CHECK FAILED:")
        for f in failures:
            print("  " + f)
        return 1
    print("check passed")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Naive PyTorch HTFR forward / autograd training step baseline (DESIGN §7).")
    ap.add_argument("--shapes", default="S1,S2,BIG",
                    help="comma list of S1,S2,BIG or custom DxNxMxK (e.g. 64x256x32x8)")
    ap.add_argument("--rows", default="4096",
                    help="comma list of batch sizes B, e.g. 256,1024,4096")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16")
    ap.add_argument("--ops", default="forward,train", help="comma list of forward,train")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls per case")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per case")
    ap.add_argument("--batches", type=int, default=4,
                    help="pre-generated input batches rotated between calls")
    ap.add_argument("--out", default="torch_baseline.json", help="JSON output path ('' = none)")
    ap.add_argument("--device", default="cuda", help="torch device for the benchmark")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--lr", type=float, default=0.05, help="SGD rate of the controls")
    ap.add_argument("--lr-geometry", type=float, default=0.005,
                    help="SGD rate of normals and offsets")
    ap.add_argument("--reduction", choices=("sum", "mean"), default="sum",
                    help="CE reduction over the batch (library default: sum)")
    ap.add_argument("--bf16-blend", choices=("fp32", "bf16"), default="fp32",
                    help="bf16 precision: blend in fp32 from up-cast gathered controls (default) "
                         "or as a bf16 batched GEMM with fp32 accumulation")
    ap.add_argument("--check", action="store_true",
                    help="check the formula against a plain loop on a tiny shape and exit")
    args = ap.parse_args(argv)
    if args.check:
        return run_check(args)
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
