#!/usr/bin/env python3
"""Naive PyTorch baseline of the fast Walsh-Hadamard transform, on the same GPU as bench_projection.

The transform written plainly: log2(n) butterfly stages, each a reshape into (rows, blocks, 2, h)
and one add and one subtract (fp32 arithmetic; bf16 rows are converted to fp32 and back, as a
PyTorch user would). Timed with CUDA events after warm-up; medians written as JSON for
bench/make_results.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def fwht(x: torch.Tensor) -> torch.Tensor:
    rows, n = x.shape
    h = 1
    while h < n:
        v = x.view(rows, n // (2 * h), 2, h)
        x = torch.stack((v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]), dim=2).view(rows, n)
        h *= 2
    return x


def time_ms(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        out.append(start.elapsed_time(stop))
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fwht-mib", type=int, default=256, help="fp32 input MiB per call")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="torch_projection.json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    elems = args.fwht_mib * (1 << 20) // 4
    base = torch.randn(elems, device=dev)
    # Check the baseline itself: H(Hx) = n x on a small case.
    small = torch.randn(3, 64, device=dev)
    assert torch.allclose(fwht(fwht(small)), 64 * small, atol=1e-3)
    results = []
    for log_n in range(10, 18):
        n = 1 << log_n
        rows = elems // n
        for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            x = base.view(rows, n).to(dtype)
            fn = (lambda: fwht(x)) if dtype == torch.float32 else (lambda: fwht(x.float()).to(dtype))
            ms = time_ms(fn, args.warmup, args.iters)
            med = ms[len(ms) // 2]
            results.append({"op": "fwht", "name": f"2^{log_n}", "dtype": name, "rows": rows, "n": n,
                            "median_ms": med, "min_ms": ms[0], "rows_per_s": rows / (med * 1e-3)})
            print(f"torch fwht 2^{log_n} {name}: {med:.3f} ms", flush=True)
    doc = {"impl": "torch", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": os.environ.get("HTFR_COMMIT", "unknown"), "results": results}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
