"""Compact embedding export on a tiny synthetic GGUF and capture manifest."""

import hashlib
import os

import numpy as np
import pytest
from safetensors import safe_open

from tools.capture import embedding
from tools.capture.capture_format import CaptureWriter
from tools.capture.errors import ChecksumError, CorruptInputError, MissingFileError
from tools.capture.hashing import sha256_file

VOCAB, HIDDEN = 40, 64  # HIDDEN a multiple of 32 so that the Q8_0 variant is possible
TOKEN_IDS = [7, 3, 30, 12, 0]  # compact classes 0..4, unk = 5
COMPACT = len(TOKEN_IDS) + 1


def full_embedding() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)


def write_gguf(path, table: np.ndarray, quant: str = "F32"):
    # The export reads GGUF through the gguf package, which the CTest gate does not require.
    gguf = pytest.importorskip("gguf")

    writer = gguf.GGUFWriter(str(path), arch="gemma3")
    writer.add_block_count(1)
    if quant == "F32":
        writer.add_tensor("token_embd.weight", table)
    else:
        qtype = gguf.GGMLQuantizationType[quant]
        writer.add_tensor("token_embd.weight", gguf.quants.quantize(table, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_capture(directory, model_sha: str, token_ids=TOKEN_IDS):
    params = {
        "format": "htfr-capture",
        "version": 1,
        "model": {
            "file": "m.gguf",
            "sha256": model_sha,
            "architecture": "gemma3",
            "n_layers": 1,
            "hidden_size": HIDDEN,
            "n_heads": 1,
            "n_kv_heads": 1,
            "head_dim": HIDDEN,
            "vocab_size": VOCAB,
        },
        "tokenizer": {"source": "gguf", "model": "llama", "vocab_size": VOCAB, "bos_id": 2, "eos_id": 1,
                      "add_bos": True},
        "corpus": {"file": "c.txt", "sha256": "1" * 64, "tokens_total": 0, "tokens_used": 0},
        "window": 4,
        "stride": 4,
        "layers": [1],
        "qkv_layers": [],
        "dtypes": {"hidden": "F16", "qkv": "F16", "compact_logprobs": "F16", "true_logprob": "F32"},
        "compact_vocab": {"size": len(token_ids) + 1, "unk_index": len(token_ids),
                          "token_ids": list(token_ids), "source": "self"},
        "engine": {"name": "test", "version": "0", "device": "cpu"},
    }  # fmt: skip
    CaptureWriter(directory, params).finish()
    return directory


@pytest.fixture
def setup(tmp_path):
    table = full_embedding()
    model = write_gguf(tmp_path / "m.gguf", table)
    capture = write_capture(tmp_path / "cap", sha256_file(model))
    return table, model, capture


def read_output(path):
    with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor("embedding"), f.metadata(), list(f.keys())


def test_rows_follow_the_compact_vocabulary(setup):
    table, model, capture = setup
    summary = embedding.export_compact_embedding(model, capture)
    out = capture / embedding.DEFAULT_NAME
    assert summary["out"] == str(out) and summary["shape"] == [COMPACT, HIDDEN]
    emb, _, keys = read_output(out)
    assert keys == ["embedding"]
    assert emb.dtype == np.float32 and emb.shape == (COMPACT, HIDDEN)
    for c, token in enumerate(TOKEN_IDS):
        np.testing.assert_array_equal(emb[c], table[token])  # raw rows, no sqrt(hidden) scaling


def test_unk_row_is_the_mean_of_the_other_rows(setup):
    table, model, capture = setup
    embedding.export_compact_embedding(model, capture)
    emb, _, _ = read_output(capture / embedding.DEFAULT_NAME)
    rest = np.setdiff1d(np.arange(VOCAB), TOKEN_IDS)
    assert rest.shape[0] == VOCAB - len(TOKEN_IDS)
    expected = table[rest].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(emb[-1], expected, rtol=0, atol=1e-6)


def test_chunked_mean_matches_direct_mean(monkeypatch):
    table = full_embedding()
    ids = np.array(TOKEN_IDS)
    monkeypatch.setattr(embedding, "_CHUNK_ROWS", 3)  # several chunks, some with compact rows
    chunked = embedding.compact_embedding(table, ids)
    rest = np.setdiff1d(np.arange(VOCAB), ids)
    np.testing.assert_allclose(chunked[-1], table[rest].astype(np.float64).mean(0), atol=1e-6)
    np.testing.assert_array_equal(chunked[:-1], table[ids])


def test_metadata(setup):
    _, model, capture = setup
    embedding.export_compact_embedding(model, capture)
    _, meta, _ = read_output(capture / embedding.DEFAULT_NAME)
    ids_bytes = b"".join(int(t).to_bytes(4, "little", signed=True) for t in TOKEN_IDS)
    assert meta == {
        "format": "htfr-compact-embedding",
        "version": "1",
        "model_sha256": sha256_file(model),
        "compact_vocab_sha256": hashlib.sha256(ids_bytes).hexdigest(),
        "unk_rule": "mean-of-rest",
        "size": str(COMPACT),
        "hidden_size": str(HIDDEN),
    }


def test_quantized_table_is_dequantized(tmp_path):
    table = full_embedding()
    model = write_gguf(tmp_path / "q.gguf", table, quant="Q8_0")
    capture = write_capture(tmp_path / "cap", sha256_file(model))
    out = tmp_path / "sub" / "e.safetensors"
    embedding.export_compact_embedding(model, capture, out)
    emb, _, _ = read_output(out)
    # Q8_0: 8-bit values with one scale per 32 values, so rows agree to ~1% of their max.
    np.testing.assert_allclose(emb[:-1], table[TOKEN_IDS], atol=0.05)


def test_model_sha_mismatch_is_a_checksum_error(tmp_path):
    model = write_gguf(tmp_path / "m.gguf", full_embedding())
    capture = write_capture(tmp_path / "cap", "0" * 64)
    with pytest.raises(ChecksumError, match="sha256"):
        embedding.export_compact_embedding(model, capture)
    assert not list((tmp_path / "cap").glob("compact_embedding*"))


def test_inconsistent_compact_vocabulary_is_rejected(tmp_path):
    model = write_gguf(tmp_path / "m.gguf", full_embedding())
    capture = write_capture(tmp_path / "cap", sha256_file(model), token_ids=[1, 2, 2])
    with pytest.raises(CorruptInputError, match="distinct"):
        embedding.export_compact_embedding(model, capture)
    capture = write_capture(tmp_path / "cap2", sha256_file(model), token_ids=[1, VOCAB])
    with pytest.raises(CorruptInputError, match="outside"):
        embedding.export_compact_embedding(model, capture)


def test_failed_write_leaves_old_file_and_no_temporary(setup, monkeypatch):
    _, model, capture = setup
    out = capture / embedding.DEFAULT_NAME
    out.write_bytes(b"previous")

    def failing_replace(src, dst):
        raise OSError("simulated failure before the rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        embedding.export_compact_embedding(model, capture)
    assert out.read_bytes() == b"previous"
    assert not list(capture.glob("*.tmp"))


def test_cli_success(setup, capsys):
    _, model, capture = setup
    out = capture / "x.safetensors"
    assert embedding.main(["--model", str(model), "--capture", str(capture), "--out", str(out)]) == 0
    assert out.is_file()
    assert "row norms" in capsys.readouterr().out


def test_cli_missing_files(setup, capsys, tmp_path):
    _, model, capture = setup
    missing = tmp_path / "absent.gguf"
    assert embedding.main(["--model", str(missing), "--capture", str(capture)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err
    assert embedding.main(["--model", str(model), "--capture", str(tmp_path / "nocap")]) == 1
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(MissingFileError):
        embedding.export_compact_embedding(missing, capture)
