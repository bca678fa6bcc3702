"""Cut a token stream into BOS-prefixed windows and decide which positions are scored.

A window starting at corpus token ``start`` with ``length`` tokens is fed to the model
as ``[BOS] + tokens[start : start + length - 1]``; its position p (0-based) predicts
corpus token ``start + p``. Windows start every ``stride`` tokens; the last one is
cut short at the end of the stream so that every token is predicted. With
``stride < window`` a token is predicted by several windows; only the first window
that predicts it marks it ``scored``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One window: corpus tokens [start, start + length); positions >= first_scored are scored."""

    index: int
    start: int
    length: int
    first_scored: int


def plan_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Windows covering tokens 0..n_tokens-1; requires 1 <= stride <= window."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    windows: list[Window] = []
    covered = 0  # corpus tokens [0, covered) are already predicted by earlier windows
    start = 0
    while start < n_tokens:
        length = min(window, n_tokens - start)
        windows.append(Window(len(windows), start, length, max(0, covered - start)))
        covered = start + length
        if covered >= n_tokens:
            break
        start += stride
    return windows


def window_arrays(tokens: np.ndarray, win: Window, bos_id: int) -> dict[str, np.ndarray]:
    """Per-position bookkeeping of one window: window, position, token, target, scored."""
    target = np.asarray(tokens[win.start : win.start + win.length], dtype=np.int32)
    token = np.empty_like(target)
    token[0] = bos_id
    token[1:] = target[:-1]
    position = np.arange(win.length, dtype=np.int32)
    return {
        "window": np.full(win.length, win.index, dtype=np.int32),
        "position": position,
        "token": token,
        "target": target,
        "scored": (position >= win.first_scored).astype(np.uint8),
    }


def total_positions(windows: list[Window]) -> int:
    """Number of captured positions (one per window token)."""
    return sum(w.length for w in windows)


def pending_windows(windows: list[Window], done: int) -> list[tuple[Window, int]]:
    """Windows still to compute when the first ``done`` capture positions are stored.

    Returns (window, skip) pairs in capture order; ``skip`` is the number of leading
    positions of that window that are already stored (non-zero for at most the first).
    """
    pending = []
    first = 0  # capture position of the window's position 0
    for w in windows:
        if first + w.length > done:
            pending.append((w, max(0, done - first)))
        first += w.length
    return pending
