#!/usr/bin/env python3
"""Markdown tables of the inference benchmark: `htfr serve-bench` JSON (HFT sessions) against
`bench/torch_teacher.py` JSON (Gemma 3 270M in PyTorch) on the same GPU, with the floors.

    python3 bench/serve_table.py --serve serve_bench.json --teacher torch_teacher.json \
        [--copy-gbs 2990 --bf16-tflops 782.2]

Floors (bf16 field copies, measured ceilings of bench/RESULTS.md):
  batch 1:  the bf16 normals of both fields read once: (N1*D1 + N2*D2) * 2 bytes / copy bandwidth.
  batch B:  the larger of that read and the distance GEMMs 2*B*(N1*D1 + N2*D2) / bf16 GEMM rate,
            plus the feature rows of
            Stage 1 written and read once (B * stage1_dim * 4 bytes * 2) and the selected control
            columns read (B * (K1*M1 + K2*M2) * 3 * 2 bytes), both at copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The default HFT sizes (include/htfr/hft.hpp default_hft_config, HFT note §4).
N1, D1, M1, K1 = 8192, 16384, 1024, 16
N2, D2, M2, K2 = 16384, 4096, 4096, 24
STAGE1_DIM = 128 * (640 + 16 + 1) + 16384 + 4 * 1024 + 3


def floors_ms(batch: int, copy_gbs: float, tflops: float) -> float:
    normals = (N1 * D1 + N2 * D2) * 2 / (copy_gbs * 1e9)
    if batch == 1:
        return normals * 1e3
    gemm = 2.0 * batch * (N1 * D1 + N2 * D2) / (tflops * 1e12)
    traffic = batch * STAGE1_DIM * 4 * 2 + batch * (K1 * M1 + K2 * M2) * 3 * 2
    return (max(gemm, normals) + traffic / (copy_gbs * 1e9)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", required=True, type=Path)
    ap.add_argument("--teacher", required=True, type=Path)
    ap.add_argument("--copy-gbs", type=float, default=2990.0)
    ap.add_argument("--bf16-tflops", type=float, default=782.2)
    args = ap.parse_args()
    serve = json.loads(args.serve.read_text())
    teacher = json.loads(args.teacher.read_text())
    out = []
    out.append("| | HFT sessions (`htfr serve-bench`) | Gemma 3 270M (`bench/torch_teacher.py`) |")
    out.append("| --- | --- | --- |")
    out.append(f"| device | {serve['device']} | {teacher['device']} |")
    out.append(f"| date | {serve['date']} | {teacher['date']} |")
    out.append(f"| commit | {serve['commit']} | {teacher['commit']} |")
    out.append(f"| weights | {serve.get('weights', 'trained checkpoint')} | random, same architecture, "
               f"{teacher['settings']['dtype']} |")
    out.append("")
    out.append("Batch 1, one token per step (medians of CUDA-event timings; the HFT step includes")
    out.append("greedy sampling on the device and feeds its token back):")
    out.append("")
    out.append("| engine | mode | median ms | p99 ms | tokens/s | floor ms | time/floor |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    floor1 = floors_ms(1, args.copy_gbs, args.bf16_tflops)
    for r in serve["runs"]:
        if r["batch"] != 1 or "median_ms" not in r:
            continue
        mode = "CUDA graph" if r["graph"] else "eager"
        out.append(f"| HFT | {mode} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | "
                   f"{r['tokens_per_s']:,.0f} | {floor1:.3f} | {r['median_ms'] / floor1:.2f}x |")
    for name, m in teacher["decode"]["modes"].items():
        if not m.get("supported"):
            out.append(f"| teacher | {name} | — | — | — | | {m.get('error', '')} |")
            continue
        out.append(f"| teacher | {name} | {m['median_ms']:.3f} | {m['p99_ms']:.3f} | "
                   f"{m['tokens_per_s']:,.0f} | | |")
    out.append("")
    out.append("Batched: HFT decode steps of B independent sessions against the teacher's prefill of")
    out.append(f"B sequences of {teacher['settings']['seq']} tokens:")
    out.append("")
    out.append("| B | HFT median ms | HFT tokens/s | floor ms | time/floor | teacher prefill tokens/s | HFT / teacher |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    prefill = {p["batch"]: p for p in teacher["prefill"]}
    for r in serve["runs"]:
        if r["batch"] == 1 or not r["graph"] or "median_ms" not in r:
            continue
        f = floors_ms(r["batch"], args.copy_gbs, args.bf16_tflops)
        t = prefill.get(r["batch"], {}).get("tokens_per_s")
        ratio = f"{r['tokens_per_s'] / t:.2f}x" if t else "—"
        tt = f"{t:,.0f}" if t else "—"
        out.append(f"| {r['batch']} | {r['median_ms']:.3f} | {r['tokens_per_s']:,.0f} | {f:.3f} | "
                   f"{r['median_ms'] / f:.2f}x | {tt} | {ratio} |")
    out.append("")
    out.append("Memory (bytes on the device):")
    out.append("")
    out.append("| engine | parameters | in use at batch 1 | in use at the largest batch |")
    out.append("| --- | --- | --- | --- |")
    runs = [r for r in serve["runs"] if "device_bytes_in_use" in r]
    gib = 1024.0 ** 3
    out.append(f"| HFT | {runs[0]['parameter_bytes'] / gib:.2f} GiB | "
               f"{runs[0]['device_bytes_in_use'] / gib:.2f} GiB | "
               f"{runs[-1]['device_bytes_in_use'] / gib:.2f} GiB (B = {runs[-1]['batch']}) |")
    peak_decode = max(m.get("peak_mem_bytes", 0) for m in teacher["decode"]["modes"].values())
    peak_prefill = max(p.get("peak_mem_bytes", 0) for p in teacher["prefill"])
    out.append(f"| teacher | {teacher['params']['bytes'] / gib:.2f} GiB | {peak_decode / gib:.2f} GiB "
               f"(peak) | {peak_prefill / gib:.2f} GiB (peak, prefill) |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
