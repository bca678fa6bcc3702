"""SPM tokenizer on a hand-made vocabulary."""

import pytest

from tools.capture.errors import CorruptInputError
from tools.capture.tokenizer import SpmTokenizer

NORMAL, CONTROL, USER, BYTE = 1, 3, 4, 6


def make_tokenizer(add_space_prefix=False, extra=()):
    entries = [("<pad>", 0.0, CONTROL), ("<eos>", 0.0, CONTROL), ("<bos>", 0.0, CONTROL)]
    entries += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    entries += [
        ("a", -1.0, NORMAL),
        ("b", -1.0, NORMAL),
        ("c", -1.0, NORMAL),
        ("\u2581", -1.0, NORMAL),
        ("ab", -2.0, NORMAL),
        ("bc", -1.5, NORMAL),
        ("\u2581a", -0.5, NORMAL),
        ("\n", 0.0, USER),
        ("\n\n", 0.0, USER),
        ("  ", 0.0, USER),
    ]
    entries += list(extra)
    tokens = [e[0] for e in entries]
    ids = {t: i for i, t in enumerate(tokens)}
    tok = SpmTokenizer(
        tokens, [e[1] for e in entries], [e[2] for e in entries], bos_id=2, add_space_prefix=add_space_prefix
    )
    return tok, ids


def test_highest_score_pair_merges_first():
    tok, ids = make_tokenizer()
    # "bc" (-1.5) beats "ab" (-2.0); "a" + "bc" is not a token, so no further merge.
    assert tok.encode("abc") == [ids["a"], ids["bc"]]


def test_equal_scores_merge_leftmost_first():
    tok, ids = make_tokenizer(
        extra=[("xy", -1.0, NORMAL), ("yx", -1.0, NORMAL), ("x", -1.0, NORMAL), ("y", -1.0, NORMAL)]
    )
    assert tok.encode("xyx") == [ids["xy"], ids["x"]]


def test_spaces_become_marks_without_prefix():
    tok, ids = make_tokenizer()
    assert tok.encode("a a") == [ids["a"], ids["\u2581a"]]
    tok_prefixed, ids = make_tokenizer(add_space_prefix=True)
    assert tok_prefixed.encode("a") == [ids["\u2581a"]]


def test_unknown_characters_fall_back_to_bytes():
    tok, ids = make_tokenizer()
    assert tok.encode("é") == [ids["<0xC3>"], ids["<0xA9>"]]


def test_user_defined_tokens_split_first_longest_first():
    tok, ids = make_tokenizer()
    assert tok.encode("a\n\n\nb") == [ids["a"], ids["\n\n"], ids["\n"], ids["b"]]
    assert tok.encode("a  b") == [ids["a"], ids["  "], ids["b"]]
    assert tok.encode("a   b") == [ids["a"], ids["  "], ids["\u2581"], ids["b"]]


def test_bos_is_prepended_on_request():
    tok, ids = make_tokenizer()
    assert tok.encode("b", add_bos=True) == [2, ids["b"]]
    assert tok.encode("") == []


def test_mismatched_vocabulary_lengths_rejected():
    with pytest.raises(CorruptInputError):
        SpmTokenizer(["a"], [0.0, 1.0], [1], bos_id=0)


def test_merges_continue_while_pairs_form_tokens():
    tok, ids = make_tokenizer(extra=[("abc", -3.0, NORMAL)])
    assert tok.encode("abc") == [ids["abc"]]
