"""Compact vocabulary: the most frequent training tokens plus one ``unk`` bucket.

The teacher's full-vocabulary distribution is collapsed onto the compact classes:
class c < unk_index gets log p(token_ids[c]); ``unk`` gets the log of the total
probability of every other token, summed directly (not as 1 - sum) so that it stays
accurate when it is small.
"""

from __future__ import annotations

import numpy as np


def build_compact_vocab(targets: np.ndarray, size: int, vocab_size: int) -> np.ndarray:
    """The ``size - 1`` most frequent ids of ``targets``: by descending count, then ascending id."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=vocab_size)
    n_keep = size - 1
    if np.count_nonzero(counts) < n_keep:
        raise ValueError(
            f"corpus has {np.count_nonzero(counts)} distinct tokens, fewer than the {n_keep} "
            "that a compact vocabulary of this size needs"
        )
    order = np.lexsort((np.arange(vocab_size), -counts))  # last key is primary
    return order[:n_keep].astype(np.int64)


def compact_index_map(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Array [vocab_size] mapping a full-vocab id to its compact class (unk = len(token_ids))."""
    mapping = np.full(vocab_size, len(token_ids), dtype=np.int32)
    mapping[np.asarray(token_ids)] = np.arange(len(token_ids), dtype=np.int32)
    return mapping


def collapse_logits(xp, logits, targets, token_ids):
    """Log-probabilities from full-vocabulary logits; ``logits`` [N, V] is overwritten.

    Args:
        xp: numpy or cupy.
        logits: float32 [N, V] (used as scratch space).
        targets: int [N] full-vocab ids of the true next tokens.
        token_ids: int [K] compact token ids (K = compact size - 1), on the same device.

    Returns:
        (true_logprob [N] float32, compact_logprobs [N, K + 1] float32).
    """
    n_rows = logits.shape[0]
    row_max = logits.max(axis=1, keepdims=True)
    true_logit = xp.take_along_axis(logits, targets.reshape(n_rows, 1), axis=1)[:, 0]
    compact_logit = logits[:, token_ids]
    logits -= row_max
    xp.exp(logits, out=logits)
    log_total = xp.log(logits.sum(axis=1))
    logits[:, token_ids] = 0.0
    log_other = xp.log(logits.sum(axis=1))
    lse = row_max[:, 0] + log_total
    compact = xp.empty((n_rows, token_ids.shape[0] + 1), dtype=xp.float32)
    compact[:, :-1] = compact_logit - lse[:, None]
    compact[:, -1] = log_other - log_total
    return (true_logit - lse).astype(xp.float32), compact
