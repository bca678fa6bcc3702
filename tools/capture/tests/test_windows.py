"""Window planning, scored flags and resume bookkeeping."""

import numpy as np
import pytest

from tools.capture.windows import pending_windows, plan_windows, total_positions, window_arrays


@pytest.mark.parametrize(
    "n_tokens, window, stride",
    [(48, 16, 16), (50, 16, 16), (1, 16, 16), (16, 16, 16), (100, 16, 5), (17, 16, 1), (33, 8, 7)],
)
def test_every_token_scored_exactly_once(n_tokens, window, stride):
    windows = plan_windows(n_tokens, window, stride)
    scored_count = np.zeros(n_tokens, dtype=int)
    predicted = np.zeros(n_tokens, dtype=int)
    for w in windows:
        assert 1 <= w.length <= window
        arrays = window_arrays(np.arange(n_tokens), w, bos_id=-1)
        predicted[arrays["target"]] += 1
        scored_count[arrays["target"][arrays["scored"] == 1]] += 1
    assert (scored_count == 1).all()
    assert (predicted >= 1).all()
    assert total_positions(windows) == predicted.sum()
    assert windows[-1].start + windows[-1].length == n_tokens


def test_overlapping_windows_mark_rescored_positions():
    windows = plan_windows(40, 16, 8)
    assert [(w.start, w.length, w.first_scored) for w in windows] == [
        (0, 16, 0),
        (8, 16, 8),
        (16, 16, 8),
        (24, 16, 8),
    ]


def test_window_arrays_shift_targets_behind_bos():
    tokens = np.array([10, 11, 12, 13, 14, 15], dtype=np.int32)
    w = plan_windows(6, 4, 4)[1]
    arrays = window_arrays(tokens, w, bos_id=2)
    assert arrays["token"].tolist() == [2, 14]
    assert arrays["target"].tolist() == [14, 15]
    assert arrays["position"].tolist() == [0, 1]
    assert arrays["window"].tolist() == [1, 1]
    assert arrays["scored"].tolist() == [1, 1]


def test_invalid_stride_rejected():
    with pytest.raises(ValueError):
        plan_windows(10, 4, 5)
    with pytest.raises(ValueError):
        plan_windows(10, 4, 0)


def test_pending_windows_resume_inside_a_window():
    windows = plan_windows(40, 16, 16)  # lengths 16, 16, 8
    assert [(w.index, s) for w, s in pending_windows(windows, 0)] == [(0, 0), (1, 0), (2, 0)]
    assert [(w.index, s) for w, s in pending_windows(windows, 20)] == [(1, 4), (2, 0)]
    assert [(w.index, s) for w, s in pending_windows(windows, 32)] == [(2, 0)]
    assert pending_windows(windows, 40) == []
