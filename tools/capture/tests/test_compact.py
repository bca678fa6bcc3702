"""Compact vocabulary construction and the collapse of full distributions onto it."""

import numpy as np
import pytest

from tools.capture.compact import build_compact_vocab, collapse_logits, compact_index_map


def test_build_orders_by_count_then_id():
    targets = np.array([7, 7, 7, 3, 3, 9, 9, 1, 5, 5, 5, 0])
    ids = build_compact_vocab(targets, size=5, vocab_size=10)
    # counts: 7->3, 5->3, 3->2, 9->2, 1->1, 0->1; ties by smaller id
    assert ids.tolist() == [5, 7, 3, 9]


def test_build_rejects_too_few_distinct_tokens():
    with pytest.raises(ValueError):
        build_compact_vocab(np.array([1, 1, 2]), size=4, vocab_size=5)


def test_index_map_sends_others_to_unk():
    mapping = compact_index_map(np.array([5, 7, 3]), vocab_size=9)
    assert mapping.tolist() == [3, 3, 3, 2, 3, 0, 3, 1, 3]


@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])
def test_collapse_is_a_distribution_and_matches_direct_math(scale):
    rng = np.random.default_rng(0)
    vocab, rows = 1000, 7
    logits = (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)
    targets = rng.integers(0, vocab, rows)
    token_ids = rng.choice(vocab, 63, replace=False)
    reference = logits.astype(np.float64)
    probs = np.exp(reference - reference.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)

    true_lp, compact = collapse_logits(np, logits.copy(), targets, token_ids)

    assert compact.shape == (rows, 64)
    np.testing.assert_allclose(np.exp(compact.astype(np.float64)).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(true_lp, np.log(probs[np.arange(rows), targets]), atol=1e-4)
    np.testing.assert_allclose(compact[:, :-1], np.log(probs[:, token_ids]), atol=1e-4)
    other = np.ones(vocab, bool)
    other[token_ids] = False
    np.testing.assert_allclose(compact[:, -1], np.log(probs[:, other].sum(1)), atol=1e-4)


def test_collapse_keeps_a_tiny_unk_mass_accurate():
    logits = np.full((1, 6), -60.0, dtype=np.float32)
    logits[0, :3] = 0.0  # compact tokens hold all but ~3 * e^-60 / 3 of the mass
    _, compact = collapse_logits(np, logits.copy(), np.array([0]), np.array([0, 1, 2]))
    assert compact[0, -1] == pytest.approx(np.log(3 * np.exp(-60.0) / 3), abs=1e-3)


def test_compact_vocabulary_from_a_longer_prefix_of_the_corpus():
    from argparse import Namespace
    from pathlib import Path

    from tools.capture.capture import COMPACT_SIZE, compact_vocab_entry
    from tools.capture.corpus import TokenizedCorpus

    # The captured prefix holds fewer distinct tokens than the compact vocabulary needs; the
    # longer prefix holds enough, and its frequencies decide.
    short = np.arange(100, dtype=np.int32)
    longer = np.concatenate([short, np.arange(COMPACT_SIZE + 10, dtype=np.int32), [5, 5, 5]])
    corpus = TokenizedCorpus(Path("corpus.txt"), "0" * 64, short, int(longer.shape[0]))
    args = Namespace(compact_vocab_from=None)
    with pytest.raises(ValueError):
        compact_vocab_entry(args, corpus, 50000, "sha")
    entry = compact_vocab_entry(args, corpus, 50000, "sha", vocab_tokens=longer)
    assert entry["size"] == COMPACT_SIZE and len(entry["token_ids"]) == COMPACT_SIZE - 1
    assert entry["token_ids"][0] == 5  # the most frequent token of the longer prefix
    assert entry["source"] == f"self, first {longer.shape[0]} tokens"
