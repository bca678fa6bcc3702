#!/usr/bin/env python3
"""Turn benchmark JSON into bench/RESULTS.md.

Why this exists: DESIGN §7 holds htfr to ratios -- against its hardware floor and against the naive
PyTorch baseline run on the same GPU in the same session. The C++ benchmarks and
bench/torch_baseline.py each write JSON; this script joins the two on (op, shape, precision,
rows), writes one Markdown table per shape, the top-K overlap table, and a "targets" section whose
met / not met verdicts are computed from the numbers, never written by hand.

Inputs (every key optional; anything missing is shown as "—"):
  --cpp    {"impl": "htfr", "device", "commit", "date", "cuda",
            "ceilings": {"copy_gbps": .., "gemm_bf16_tflops": .., ...},
            "results": [{"op", "shape", "precision", "rows", "N", "D", "M", "K", "median_ms",
                         "rows_per_s", "tflops", "gbps", "floor_ms", "over_floor"}, ...],
            "topk_overlap": [{"shape", "precision", "overlap"}, ...]}
  --torch  {"impl": "torch", "device", "torch", "cuda", "date", "commit",
            "results": [{"op", "shape", "precision", "rows", "N", "D", "M", "K", "median_ms",
                         "min_ms", "p90_ms", "rows_per_s"} or {..., "error": "out of memory"}]}
  --projection        bench_projection's JSON: {"device", "commit", "date", "cuda", "copy_gbps",
                      "results": [{"op", "name", "dtype", "rows", "n", "median_ms", "bytes",
                                   "gbps", "rows_per_s", "floor_ms"}, ...]}
  --torch-projection  bench/torch_projection.py's JSON (FWHT medians on the same GPU)
  --init              bench_init's JSON: {"device", "commit", "date", "rows", "dim", "k",
                      "out_dim", "precision", "first_call_s", "kmeans_1_iter_s",
                      "kmeans_3_iter_s", "seconds_per_iteration", "iteration_gemm_tflops",
                      "init_pool_3_iter_s"}

Usage:
  python3 bench/make_results.py --cpp htfr.json --torch torch.json [--out bench/RESULTS.md]

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

DASH = "—"
SHAPE_ORDER = ["S1", "S2", "BIG"]
OP_ORDER = ["forward", "train", "select", "distance", "blend", "update"]
PRECISION_ORDER = ["fp32", "tf32", "bf16", "fp16"]

# Bars from the issue and from DESIGN §7. Each is evaluated on whatever data is present.
FORWARD_VS_TORCH_SHAPE = "S2"
FORWARD_VS_TORCH_BAR = 4.0  # issue: forward at S2 >= 4x PyTorch
TRAIN_VS_TORCH_BAR = 10.0  # issue: train step >= 10x the PyTorch autograd step
FORWARD_OVER_FLOOR_BAR = 1.3  # DESIGN §7: forward within 1.3x of its floor
TRAIN_OVER_FORWARD_BAR = 3.0  # DESIGN §7: a training step within 3x of the forward
TOPK_OVERLAP_BAR = 0.99  # DESIGN §7: top-K overlap of bf16/fp16 distances with fp32 >= 99 %
FWHT_BAR_SIZE = "2^14"  # issue: FWHT at 2^14 >= 70 % of the copy bandwidth, fp32 and bf16
FWHT_BAR = 0.70


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


# Bare non-finite numbers as C++ streams print them ("inf", "-nan"): not JSON, read as null.
_NONFINITE = re.compile(r"(?<=[:\[,\s])[-+]?(?:inf(?:inity)?|nan)(?=\s*[,\]}])", re.IGNORECASE)


def load_json(path, what):
    """The parsed document, or {} (with a warning) when the file is absent or unreadable."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        print(f"make_results: cannot read {what} file {path} ({exc.strerror or exc}); its columns "
              "will be empty", file=sys.stderr)
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = json.loads(_NONFINITE.sub("null", text))
            print(f"make_results: {what} file {path} holds non-finite numbers; read as missing",
                  file=sys.stderr)
        except ValueError as exc:
            print(f"make_results: cannot parse {what} file {path}: {exc}", file=sys.stderr)
            return {}
    if not isinstance(doc, dict):
        print(f"make_results: {what} file {path} is not a JSON object; ignored", file=sys.stderr)
        return {}
    return doc


def num(v):
    """A finite float, or None for anything else (missing, null, string, NaN, bool)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def norm_rows(v):
    f = num(v)
    if f is not None and f == int(f):
        return int(f)
    return None if v is None else str(v)


def entry_key(r):
    return (str(r.get("op", "?")), str(r.get("shape", "?")), str(r.get("precision", "?")),
            norm_rows(r.get("rows")))


def results_of(doc):
    out = {}
    rs = doc.get("results")
    if not isinstance(rs, list):
        return out
    for r in rs:
        if isinstance(r, dict) and r.get("op"):
            out[entry_key(r)] = r  # a later duplicate replaces an earlier one
    return out


def median_ms(r):
    return num(r.get("median_ms")) if r else None


def rows_per_s(r):
    if not r:
        return None
    v = num(r.get("rows_per_s"))
    if v is None:
        ms, rows = median_ms(r), num(r.get("rows"))
        if ms and rows:
            v = rows / (ms / 1e3)
    return v


def time_over_floor(r):
    if not r:
        return None
    v = num(r.get("over_floor"))
    if v is None:
        ms, floor = median_ms(r), num(r.get("floor_ms"))
        if ms is not None and floor:
            v = ms / floor
    return v


def speedup(h, t):
    hm, tm = median_ms(h), median_ms(t)
    if hm and tm:
        return tm / hm
    return None


# ------------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------------


def f_ms(v):
    if v is None:
        return DASH
    if v >= 100:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def f_rate(v):
    if v is None:
        return DASH
    if v >= 1e9:
        return f"{v / 1e9:.2f}G"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def f_fixed(v, digits=1):
    return DASH if v is None else f"{v:.{digits}f}"


def f_ratio(v):
    return DASH if v is None else f"{v:.2f}×"


def f_pct(v):
    if v is None:
        return DASH
    return f"{v * 100:.2f} %" if v <= 1.0 else f"{v:.2f} %"


def f_text(v):
    if v is None or v == "":
        return DASH
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    return lines


def order_index(value, order):
    return (order.index(value), "") if value in order else (len(order), str(value))


def sort_key(key):
    op, shape, prec, rows = key
    r = rows if isinstance(rows, int) else (1 << 62)
    return (order_index(op, OP_ORDER), order_index(prec, PRECISION_ORDER), r, str(rows))


def shape_sort_key(shape):
    return order_index(shape, SHAPE_ORDER)


def ceiling_label(key):
    units = [("_tflops", "TFLOP/s"), ("_gflops", "GFLOP/s"), ("_tbps", "TB/s"), ("_gbps", "GB/s"),
             ("_ms", "ms"), ("_us", "µs"), ("_rows_per_s", "rows/s")]
    for suffix, unit in units:
        if key.endswith(suffix):
            return key[: -len(suffix)].replace("_", " "), unit
    return key.replace("_", " "), ""


def torch_cell(t):
    """Torch median, or the recorded error/skip reason, or a dash."""
    if not t:
        return DASH
    ms = median_ms(t)
    if ms is not None:
        return f_ms(ms)
    err = t.get("error")
    if err:
        return "OOM" if "out of memory" in str(err).lower() else f_text(err)
    return DASH


def htfr_cell(h):
    if not h:
        return DASH
    ms = median_ms(h)
    if ms is not None:
        return f_ms(ms)
    err = h.get("error")
    if err:
        return "OOM" if "out of memory" in str(err).lower() else f_text(err)
    return DASH


# ------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------


def verdict(points):
    """points: (precision, ok) pairs. Per precision, 'met' only when every evaluated point meets
    the bar; precisions are reported separately because the bars are usually meant for the
    product precision (bf16) and an fp32 shortfall should not hide a bf16 result, or vice versa."""
    if not points:
        return "no data"
    by_prec = {}
    for prec, ok in points:
        by_prec.setdefault(str(prec), []).append(bool(ok))
    parts = []
    for prec in sorted(by_prec, key=lambda p: order_index(p, PRECISION_ORDER)):
        oks = by_prec[prec]
        n_met = sum(oks)
        if n_met == len(oks):
            parts.append(f"{prec}: **met** ({n_met}/{len(oks)})")
        else:
            parts.append(f"{prec}: **not met** ({n_met}/{len(oks)} met)")
    return "; ".join(parts)


def targets_section(htfr, torch, overlaps):
    lines = ["## Targets", "",
             "Verdicts are computed from the data, per precision: a target is met at a precision "
             "when every point with data meets its bar. Speed-ups compare htfr with the PyTorch "
             "baseline at the same op, shape, precision and rows; the last column compares with "
             "the faster of the PyTorch precisions at those rows.", ""]

    def fastest_torch(op, shape, rows):
        best = None
        for (o, s, _, r), t in torch.items():
            if o == op and s == shape and r == rows:
                ms = median_ms(t)
                if ms is not None and (best is None or ms < best):
                    best = ms
        return best

    summary = []

    def vs_torch(title, op, bar, shape_filter):
        rows_out, points = [], []
        for key in sorted(htfr, key=lambda k: (shape_sort_key(k[1]), sort_key(k))):
            o, s, p, r = key
            if o != op or (shape_filter and s != shape_filter):
                continue
            h, t = htfr[key], torch.get(key)
            sp = speedup(h, t)
            best = fastest_torch(o, s, r)
            hm = median_ms(h)
            sp_best = best / hm if (best and hm) else None
            if sp is None:
                status = DASH
            else:
                ok = sp >= bar
                points.append((p, ok))
                status = "met" if ok else "not met"
            rows_out.append([s, p, str(r), f_ms(hm), torch_cell(t), f_ratio(sp), status,
                             f_ratio(sp_best)])
        lines.append(f"### {title}")
        lines.append("")
        if rows_out:
            lines.extend(md_table(["shape", "precision", "rows", "htfr ms", "torch ms",
                                   "speed-up", f"≥ {bar:g}×", "vs fastest torch"], rows_out))
        else:
            lines.append("No htfr data for this op.")
        lines.append("")
        lines.append(f"Verdict: {verdict(points)}")
        lines.append("")
        summary.append((title, verdict(points)))

    vs_torch(f"Forward at {FORWARD_VS_TORCH_SHAPE} ≥ {FORWARD_VS_TORCH_BAR:g}× PyTorch (issue)",
             "forward", FORWARD_VS_TORCH_BAR, FORWARD_VS_TORCH_SHAPE)
    vs_torch(f"Training step ≥ {TRAIN_VS_TORCH_BAR:g}× the PyTorch autograd step (issue)",
             "train", TRAIN_VS_TORCH_BAR, None)

    # Forward within 1.3x of its floor.
    rows_out, points = [], []
    for key in sorted(htfr, key=lambda k: (shape_sort_key(k[1]), sort_key(k))):
        o, s, p, r = key
        if o != "forward":
            continue
        h = htfr[key]
        ratio = time_over_floor(h)
        if ratio is None:
            status = DASH
        else:
            ok = ratio <= FORWARD_OVER_FLOOR_BAR
            points.append((p, ok))
            status = "met" if ok else "not met"
        rows_out.append([s, p, str(r), f_ms(median_ms(h)), f_ms(num(h.get("floor_ms"))),
                         f_ratio(ratio), status])
    title = f"Forward within {FORWARD_OVER_FLOOR_BAR:g}× of its floor (DESIGN §7)"
    lines += [f"### {title}", ""]
    if rows_out:
        lines += md_table(["shape", "precision", "rows", "htfr ms", "floor ms", "time/floor",
                           f"≤ {FORWARD_OVER_FLOOR_BAR:g}×"], rows_out)
    else:
        lines.append("No htfr forward data.")
    lines += ["", f"Verdict: {verdict(points)}", ""]
    summary.append((title, verdict(points)))

    # Training step within 3x of the forward.
    rows_out, points = [], []
    for key in sorted(htfr, key=lambda k: (shape_sort_key(k[1]), sort_key(k))):
        o, s, p, r = key
        if o != "train":
            continue
        tr = median_ms(htfr[key])
        fw = median_ms(htfr.get(("forward", s, p, r)))
        ratio = tr / fw if (tr is not None and fw) else None
        if ratio is None:
            status = DASH
        else:
            ok = ratio <= TRAIN_OVER_FORWARD_BAR
            points.append((p, ok))
            status = "met" if ok else "not met"
        rows_out.append([s, p, str(r), f_ms(tr), f_ms(fw), f_ratio(ratio), status])
    title = f"Training step within {TRAIN_OVER_FORWARD_BAR:g}× of the forward (DESIGN §7)"
    lines += [f"### {title}", ""]
    if rows_out:
        lines += md_table(["shape", "precision", "rows", "train ms", "forward ms", "train/forward",
                           f"≤ {TRAIN_OVER_FORWARD_BAR:g}×"], rows_out)
    else:
        lines.append("No htfr training-step data.")
    lines += ["", f"Verdict: {verdict(points)}", ""]
    summary.append((title, verdict(points)))

    # Top-K overlap.
    points = []
    for o in overlaps:
        v = num(o.get("overlap"))
        if v is not None:
            frac = v if v <= 1.0 else v / 100.0
            points.append((o.get("precision", "?"), frac >= TOPK_OVERLAP_BAR))
    title = f"Top-K overlap of reduced-precision distances with fp32 ≥ {TOPK_OVERLAP_BAR:.0%} " \
            f"(DESIGN §7)"
    lines += [f"### {title}", "", "See the top-K overlap table above.", "",
              f"Verdict: {verdict(points)}", ""]
    summary.append((title, verdict(points)))

    head = ["| target | verdict |", "| --- | --- |"] + [f"| {t} | {v} |" for t, v in summary]
    return lines, head


# ------------------------------------------------------------------------------------------------
# Document
# ------------------------------------------------------------------------------------------------


def build(cpp, tor, cpp_path, torch_path):
    htfr = results_of(cpp)
    torch = results_of(tor)
    raw_overlaps = cpp.get("topk_overlap")
    overlaps = [o for o in raw_overlaps if isinstance(o, dict)] \
        if isinstance(raw_overlaps, list) else []

    out = ["# htfr benchmark results", "",
           "Generated by `bench/make_results.py` from "
           f"`{f_text(cpp_path)}` (htfr) and `{f_text(torch_path)}` (PyTorch baseline). "
           "Do not edit by hand: re-run the benchmarks and the script.", ""]

    # Header: where and when.
    meta = [
        ["device", f_text(cpp.get("device")), f_text(tor.get("device"))],
        ["date", f_text(cpp.get("date")), f_text(tor.get("date"))],
        ["commit", f_text(cpp.get("commit")), f_text(tor.get("commit"))],
        ["CUDA", f_text(cpp.get("cuda")), f_text(tor.get("cuda"))],
        ["PyTorch", DASH, f_text(tor.get("torch"))],
    ]
    out += ["## Run", ""]
    out += md_table(["", "htfr (C++)", "PyTorch baseline"], meta)
    out.append("")
    d1, d2 = cpp.get("device"), tor.get("device")
    if d1 and d2 and str(d1) != str(d2):
        out += [f"**Warning:** the two runs report different devices ({f_text(d1)} vs "
                f"{f_text(d2)}); speed-ups compare different GPUs.", ""]
    c1, c2 = cpp.get("commit"), tor.get("commit")
    if c1 and c2 and str(c1) != str(c2):
        out += [f"Note: the runs are from different commits ({f_text(c1)} vs {f_text(c2)}).", ""]
    settings = tor.get("settings")
    if isinstance(settings, dict) and settings:
        out += ["PyTorch baseline settings: " +
                ", ".join(f"{f_text(k)}={f_text(v)}" for k, v in settings.items()) + ".", ""]

    ceilings = cpp.get("ceilings")
    out += ["## Measured ceilings", ""]
    if isinstance(ceilings, dict) and ceilings:
        rows = []
        for k, v in ceilings.items():
            label, unit = ceiling_label(str(k))
            n = num(v)
            rows.append([f_text(label), f_text(v) if n is None else f"{n:,.4g}", unit or DASH])
        out += md_table(["ceiling", "value", "unit"], rows)
    else:
        out.append("No ceilings recorded.")
    out.append("")

    # Per-shape tables.
    keys = set(htfr) | set(torch)
    shapes = sorted({k[1] for k in keys}, key=shape_sort_key)
    header = ["op", "precision", "rows", "htfr median ms", "htfr rows/s", "TFLOP/s", "GB/s",
              "floor ms", "time/floor", "torch median ms", "torch rows/s", "speed-up vs torch"]
    out += ["## Results", "",
            "Medians of CUDA-event timings. Speed-up = torch median / htfr median at the same op, "
            "shape, precision and rows. OOM = the case ran out of GPU memory; "
            f"{DASH} = not measured.", ""]
    for shape in shapes:
        shape_keys = sorted((k for k in keys if k[1] == shape), key=sort_key)
        dims = None
        for k in shape_keys:
            r = htfr.get(k) or torch.get(k) or {}
            if all(x in r for x in ("N", "D", "M", "K")):
                dims = f"D={r['D']} N={r['N']} M={r['M']} K={r['K']}"
                break
        out += [f"### {f_text(shape)}" + (f" ({dims})" if dims else ""), ""]
        rows = []
        for k in shape_keys:
            h, t = htfr.get(k), torch.get(k)
            rows.append([
                f_text(k[0]), f_text(k[2]), f_text(k[3]),
                htfr_cell(h), f_rate(rows_per_s(h)),
                f_fixed(num(h.get("tflops")) if h else None, 1),
                f_fixed(num(h.get("gbps")) if h else None, 0),
                f_ms(num(h.get("floor_ms")) if h else None),
                f_ratio(time_over_floor(h)),
                torch_cell(t), f_rate(rows_per_s(t)),
                f_ratio(speedup(h, t)),
            ])
        out += md_table(header, rows)
        out.append("")
    if not shapes:
        out += ["No results in either file.", ""]

    # Top-K overlap.
    out += ["## Top-K overlap", "",
            f"Fraction of the fp32 top-K set recovered with reduced-precision distances "
            f"(target ≥ {TOPK_OVERLAP_BAR:.0%}).", ""]
    if overlaps:
        rows = []
        for o in sorted(overlaps, key=lambda o: (shape_sort_key(str(o.get("shape"))),
                                                 order_index(o.get("precision"),
                                                             PRECISION_ORDER))):
            v = num(o.get("overlap"))
            frac = None if v is None else (v if v <= 1.0 else v / 100.0)
            status = DASH if frac is None else ("met" if frac >= TOPK_OVERLAP_BAR else "not met")
            rows.append([f_text(o.get("shape")), f_text(o.get("precision")),
                         f_text(o.get("rows")) if "rows" in o else DASH, f_pct(frac), status])
        out += md_table(["shape", "precision", "rows", "overlap",
                         f"≥ {TOPK_OVERLAP_BAR:.0%}"], rows)
    else:
        out.append("No top-K overlap recorded.")
    out.append("")

    target_lines, summary = targets_section(htfr, torch, overlaps)
    # Title and explanation, the summary table, then the per-target details.
    out += target_lines[:4] + summary + [""] + target_lines[4:]
    return "\n".join(out).rstrip() + "\n"


def projection_section(proj, tproj, proj_path, tproj_path):
    """Markdown for the projection benchmark: FWHT against copy bandwidth and the naive PyTorch
    transform, then CountSketch, SRHT and the two stage stacks."""
    results = [r for r in proj.get("results", []) if isinstance(r, dict)]
    if not results:
        return []
    copy = num(proj.get("copy_gbps"))
    torch = {(r.get("op"), r.get("name"), r.get("dtype")): r
             for r in tproj.get("results", []) if isinstance(r, dict)}
    out = ["## Projection stack", "",
           f"Generated from `{f_text(proj_path)}` (htfr) and `{f_text(tproj_path)}` (PyTorch). "
           f"Device {f_text(proj.get('device'))}, commit {f_text(proj.get('commit'))}, "
           f"date {f_text(proj.get('date'))}, CUDA {f_text(proj.get('cuda'))}; PyTorch "
           f"{f_text(tproj.get('torch'))} on {f_text(tproj.get('device'))}. Copy bandwidth "
           f"measured in the same run: {f_fixed(copy, 0)} GB/s (bytes read + written). "
           "GB/s counts each input byte read once and each output byte written once; the floor "
           "is those bytes at the copy bandwidth.", ""]
    out += ["### Fast Walsh–Hadamard transform", ""]
    rows, verdicts = [], []
    for r in results:
        if r.get("op") != "fwht":
            continue
        gbps, t = num(r.get("gbps")), torch.get(("fwht", r.get("name"), r.get("dtype")))
        frac = gbps / copy if gbps is not None and copy else None
        rows.append([f_text(r.get("name")), f_text(r.get("dtype")), f_text(r.get("rows")),
                     f_ms(num(r.get("median_ms"))), f_fixed(gbps, 0), f_pct(frac),
                     f_ratio(time_over_floor(r)), f_ms(num(t.get("median_ms")) if t else None),
                     f_ratio(speedup(r, t) if t else None)])
        if r.get("name") == FWHT_BAR_SIZE and frac is not None:
            verdicts.append(f"{r.get('dtype')} {f_pct(frac)} "
                            f"({'met' if frac >= FWHT_BAR else 'not met'})")
    out += md_table(["size", "dtype", "rows", "median ms", "GB/s", "of copy", "time/floor",
                     "torch median ms", "speed-up vs torch"], rows)
    out += ["", f"Bar: FWHT at {FWHT_BAR_SIZE} ≥ {FWHT_BAR:.0%} of the copy bandwidth — " +
            ("; ".join(verdicts) if verdicts else DASH) + ".", ""]
    out += ["### CountSketch, SRHT and the stage stacks", "",
            "Stage 1: 98,560 raw → CountSketch 32,768 → SRHT 16,384 (bf16 out). Stage 2: 11,328 "
            "raw ([1,024 embedding, 16 × 640 token embeddings, 64 metadata]) → CountSketch 8,192 "
            "→ SRHT 4,096. Sparse CountSketch: 1,024 non-zeros per row over 2^20 features → "
            "32,768.", ""]
    rows = []
    for r in results:
        if r.get("op") == "fwht":
            continue
        gbps = num(r.get("gbps"))
        rows.append([f_text(r.get("op")), f_text(r.get("name")), f_text(r.get("dtype")),
                     f_text(r.get("rows")), f_ms(num(r.get("median_ms"))),
                     f_rate(num(r.get("rows_per_s"))), f_fixed(gbps, 0),
                     f_pct(gbps / copy if gbps is not None and copy else None),
                     f_ratio(time_over_floor(r))])
    out += md_table(["op", "shape", "out dtype", "rows", "median ms", "rows/s", "GB/s",
                     "of copy", "time/floor"], rows)
    return out + [""]


def init_section(doc, path):
    """Markdown for the data-driven initialisation benchmark (wall-clock seconds)."""
    if not doc:
        return []
    rows = [["k-means, 1 Lloyd iteration (with seeding and the host copy of the result)",
             f_fixed(num(doc.get("kmeans_1_iter_s")), 2)],
            ["k-means, 3 Lloyd iterations", f_fixed(num(doc.get("kmeans_3_iter_s")), 2)],
            ["one Lloyd iteration (difference, halved)",
             f_fixed(num(doc.get("seconds_per_iteration")), 2)],
            ["init_pool_from_data (3 Lloyd iterations, principal directions, pool written)",
             f_fixed(num(doc.get("init_pool_3_iter_s")), 2)]]
    return ["## Data-driven initialisation", "",
            f"Generated from `{f_text(path)}`: device {f_text(doc.get('device'))}, commit "
            f"{f_text(doc.get('commit'))}, date {f_text(doc.get('date'))}; "
            f"{f_text(doc.get('rows'))} rows × {f_text(doc.get('dim'))} values, "
            f"k = {f_text(doc.get('k'))} clusters, {f_text(doc.get('precision'))} distance GEMMs, "
            f"pool outputs {f_text(doc.get('out_dim'))}. Wall-clock seconds after an untimed "
            f"first call ({f_fixed(num(doc.get('first_call_s')), 2)} s); the iteration's "
            f"distance GEMM runs at {f_fixed(num(doc.get('iteration_gemm_tflops')), 0)} "
            "TFLOP/s.", ""] + md_table(["operation", "seconds"], rows) + [""]


def main(argv=None):
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Join htfr and PyTorch benchmark JSON into Markdown.")
    ap.add_argument("--cpp", help="htfr C++ benchmark JSON")
    ap.add_argument("--torch", help="PyTorch baseline JSON (bench/torch_baseline.py)")
    ap.add_argument("--out", default=str(here / "RESULTS.md"),
                    help="Markdown output path, '-' for stdout (default: bench/RESULTS.md)")
    ap.add_argument("--projection", help="bench_projection JSON")
    ap.add_argument("--torch-projection", help="bench/torch_projection.py JSON")
    ap.add_argument("--init", help="bench_init JSON")
    ap.add_argument("--notes", help="Markdown file appended as the 'Notes' section (method, "
                                    "floors, caveats), kept beside the data it explains")
    args = ap.parse_args(argv)
    if not args.cpp and not args.torch:
        ap.error("give --cpp and/or --torch")
    cpp = load_json(args.cpp, "htfr")
    tor = load_json(args.torch, "torch")
    text = build(cpp, tor, os.path.basename(args.cpp) if args.cpp else DASH,
                 os.path.basename(args.torch) if args.torch else DASH)
    if args.projection:
        proj = load_json(args.projection, "projection")
        tproj = load_json(args.torch_projection, "torch projection") \
            if args.torch_projection else {}
        text += "\n" + "\n".join(projection_section(
            proj, tproj, os.path.basename(args.projection),
            os.path.basename(args.torch_projection) if args.torch_projection else DASH))
    if args.init:
        text += "\n" + "\n".join(init_section(load_json(args.init, "init"),
                                               os.path.basename(args.init)))
    if args.notes:
        text += "\n" + Path(args.notes).read_text(encoding="utf-8").rstrip() + "\n"
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and not out.is_file():
        # A device or pipe (e.g. /dev/null): write through it, never replace it.
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        # Regular file: write a temporary beside it, then rename over it.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
