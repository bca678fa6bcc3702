#!/usr/bin/env python3
"""Plot learning curves from the training CLI's JSONL metric files.

Usage: python3 tools/plot_metrics.py METRICS.jsonl [MORE.jsonl ...] --out curves.png [--x tokens|step]

Each non-blank line of an input file is a JSON object with at least ``"kind"`` (a string,
normally ``"train"`` or ``"eval"``) and the x-axis key (``"tokens"`` by default, or ``"step"``).
Every other key whose value is a number (not a bool) gets one subplot, in order of first
appearance; the series of each (file, kind) pair are drawn in it, train as lines, eval as
dashed lines with markers. Skipped keys: ``step``, ``tokens`` and time-like keys (``time``,
``timestamp``, ``wall``, ``elapsed``, ``seconds`` and names starting with ``time_``, ``wall_``
or ``elapsed_`` or ending with ``_time``, ``_timestamp``, ``_seconds``, ``_secs``,
``_elapsed``); rates such as ``tokens_per_s`` are plotted. The y axis is logarithmic for
keys ending in ``_ppl`` and for ``ratio`` (when all their values are positive). An object
``"baseline_<suffix>": {"name": value, ...}`` (e.g. ``"baseline_ppl": {"kn5": 123.4}``)
adds a horizontal reference line per name to the subplots of keys ending in ``_<suffix>``
(the last value seen in each file is used). Non-finite values leave gaps.

The figure is rendered with Matplotlib's Agg backend and written atomically (temporary
file, fsync, rename); the format follows the extension of ``--out`` (PNG by default).
Errors (missing file, invalid JSON line, no plottable data) print one ``error: ...`` line
naming the file (and line) and exit with status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

X_KEYS = ("tokens", "step")
TIME_KEYS = frozenset({"time", "timestamp", "wall", "elapsed", "seconds"})
TIME_PREFIXES = ("time_", "wall_", "elapsed_")
TIME_SUFFIXES = ("_time", "_timestamp", "_seconds", "_secs", "_elapsed")
BASELINE_PREFIX = "baseline_"
EXIT_ERROR = 2


class PlotError(Exception):
    """Bad input or output of plot_metrics (reported as one line, exit status 2)."""


@dataclass
class Series:
    """The points of one metric of one (file, kind) pair."""

    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


@dataclass
class Metrics:
    """Everything read from the input files."""

    # key -> (file label, kind) -> Series; dicts keep the order of first appearance
    series: dict[str, dict[tuple[str, str], Series]] = field(default_factory=dict)
    # suffix (e.g. "ppl") -> (file label, baseline name) -> value
    baselines: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)


def is_time_like(key: str) -> bool:
    """Whether a key holds a clock or a duration (not plotted)."""
    k = key.lower()
    return k in TIME_KEYS or k.startswith(TIME_PREFIXES) or k.endswith(TIME_SUFFIXES)


def is_number(value) -> bool:
    """A JSON number (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def file_labels(paths: list[Path]) -> list[str]:
    """Legend labels of the input files: the stem, or the whole path when stems repeat."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [str(p) for p in paths]


def read_metrics(paths: list[Path], x_key: str) -> Metrics:
    """Parse all input files; raise PlotError naming the file and line on bad input."""
    metrics = Metrics()
    for path, label in zip(paths, file_labels(paths)):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise PlotError(f"{path}: file not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise PlotError(f"{path}: cannot read: {exc}") from exc
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PlotError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise PlotError(f"{where}: expected a JSON object, got {type(record).__name__}")
            kind = record.get("kind")
            if not isinstance(kind, str):
                raise PlotError(f'{where}: missing or non-string "kind"')
            x = record.get(x_key)
            if not is_number(x):
                raise PlotError(f'{where}: missing or non-numeric "{x_key}" (the x axis)')
            for key, value in record.items():
                if key in X_KEYS or key == "kind" or is_time_like(key):
                    continue
                if is_number(value):
                    y = float(value)
                    s = metrics.series.setdefault(key, {}).setdefault((label, kind), Series())
                    s.xs.append(float(x))
                    s.ys.append(y if math.isfinite(y) else math.nan)
                elif key.startswith(BASELINE_PREFIX) and isinstance(value, dict):
                    suffix = key[len(BASELINE_PREFIX):]
                    for name, ref in value.items():
                        if is_number(ref) and math.isfinite(ref):
                            metrics.baselines.setdefault(suffix, {})[(label, str(name))] = float(ref)
    if not metrics.series:
        names = ", ".join(str(p) for p in paths)
        raise PlotError(f"{names}: no plottable data (no numeric metric besides step/tokens/time)")
    return metrics


def use_log_scale(key: str, values: list[float]) -> bool:
    """Log y for perplexities and ratios whose values are all positive."""
    if not (key.endswith("_ppl") or key == "ratio"):
        return False
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0


def render(metrics: Metrics, x_key: str, title: str | None = None) -> "object":
    """Build the Matplotlib figure (one subplot per metric key)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    keys = list(metrics.series)
    ncols = 1 if len(keys) == 1 else 2
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    labels = sorted({label for per_key in metrics.series.values() for label, _ in per_key})
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(labels)}
    several_files = len(labels) > 1
    for ax, key in zip(axes, keys):
        all_values = []
        for (label, kind), s in metrics.series[key].items():
            order = sorted(range(len(s.xs)), key=s.xs.__getitem__)
            xs, ys = [s.xs[i] for i in order], [s.ys[i] for i in order]
            all_values += ys
            style = {"train": dict(linestyle="-", linewidth=1.2),
                     "eval": dict(linestyle="--", marker="o", markersize=3.5, linewidth=1.2)}
            kw = style.get(kind, dict(linestyle=":", marker="s", markersize=3, linewidth=1.0))
            name = f"{label} {kind}" if several_files else kind
            ax.plot(xs, ys, color=color_of[label], label=name, **kw)
        suffix = key.rsplit("_", 1)[1] if "_" in key else None
        refs = metrics.baselines.get(suffix, {}) if suffix else {}
        for i, ((label, name), value) in enumerate(sorted(refs.items())):
            text = f"{label} {name} {value:g}" if several_files else f"{name} {value:g}"
            ax.axhline(value, color="0.35", linestyle=(0, (1 + i, 2)), linewidth=1.0, label=text)
            all_values.append(value)
        if use_log_scale(key, all_values):
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via ``path.tmp``, fsync and rename; no temporary left on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plot_metrics(paths: list[Path], out: Path, x_key: str = "tokens", title: str | None = None) -> int:
    """Read ``paths``, write the figure to ``out``; return the number of subplots."""
    metrics = read_metrics([Path(p) for p in paths], x_key)
    fig = render(metrics, x_key, title)
    fmt = Path(out).suffix.lstrip(".").lower() or "png"
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=110)
    except ValueError as exc:
        raise PlotError(f"{out}: cannot write format {fmt!r}: {exc}") from exc
    try:
        write_atomic(Path(out), buffer.getvalue())
    except OSError as exc:
        raise PlotError(f"{out}: cannot write: {exc}") from exc
    return len(metrics.series)


def main(argv=None) -> int:
    """Command-line entry point; exit status 0 on success, 2 on bad input."""
    p = argparse.ArgumentParser(prog="plot_metrics.py", description=__doc__.splitlines()[0])
    p.add_argument("metrics", nargs="+", type=Path, help="JSONL metric files")
    p.add_argument(
        "--out", type=Path, required=True, help="output image (PNG unless the extension says otherwise)"
    )
    p.add_argument("--x", choices=X_KEYS, default="tokens", help="x axis (default tokens)")
    p.add_argument("--title", default=None, help="figure title")
    args = p.parse_args(argv)
    try:
        count = plot_metrics(args.metrics, args.out, args.x, args.title)
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"[plot_metrics] wrote {args.out} ({count} metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
