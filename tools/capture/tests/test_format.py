"""Capture writer and reader: atomic shards, manifest states, resume and validation."""

import json

import numpy as np
import pytest

from tools.capture.capture_format import (
    MANIFEST_NAME,
    CaptureReader,
    CaptureWriter,
    expected_tensors,
    load_manifest,
    to_f16,
)
from tools.capture.errors import ChecksumError, CorruptInputError, MissingFileError, ParameterMismatchError

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, COMPACT = 8, 2, 1, 4, 6


def parameters(**changes):
    params = {
        "format": "htfr-capture",
        "version": 1,
        "model": {
            "file": "m.gguf",
            "sha256": "0" * 64,
            "architecture": "gemma3",
            "n_layers": 2,
            "hidden_size": HIDDEN,
            "n_heads": HEADS,
            "n_kv_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "vocab_size": 50,
        },
        "tokenizer": {
            "source": "gguf",
            "model": "llama",
            "vocab_size": 50,
            "bos_id": 2,
            "eos_id": 1,
            "add_bos": True,
        },
        "corpus": {"file": "c.txt", "sha256": "1" * 64, "tokens_total": 20, "tokens_used": 12},
        "window": 4,
        "stride": 4,
        "layers": [1, 2],
        "qkv_layers": [1],
        "dtypes": {"hidden": "F16", "qkv": "F16", "compact_logprobs": "F16", "true_logprob": "F32"},
        "compact_vocab": {
            "size": COMPACT,
            "unk_index": COMPACT - 1,
            "token_ids": [5, 6, 7, 8, 9],
            "source": "self",
        },
        "engine": {"name": "test", "version": "0", "device": "cpu"},
    }
    params.update(changes)
    return params


def shard_tensors(first: int, count: int) -> dict:
    rng = np.random.default_rng(first)
    index = np.arange(first, first + count, dtype=np.int32)
    t = {
        "window": index // 4,
        "position": index % 4,
        "token": index + 1,
        "target": index + 2,
        "target_compact": (index % COMPACT).astype(np.int32),
        "scored": np.ones(count, np.uint8),
        "true_logprob": -rng.random(count).astype(np.float32),
        "compact_logprobs": rng.standard_normal((count, COMPACT)).astype(np.float16),
    }
    for layer in (1, 2):
        t[f"hidden.{layer}"] = rng.standard_normal((count, HIDDEN)).astype(np.float16)
    t["q.1"] = rng.standard_normal((count, HEADS, HEAD_DIM)).astype(np.float16)
    t["k.1"] = rng.standard_normal((count, KV_HEADS, HEAD_DIM)).astype(np.float16)
    t["v.1"] = rng.standard_normal((count, KV_HEADS, HEAD_DIM)).astype(np.float16)
    return t


def manifest_of(directory):
    return json.loads((directory / MANIFEST_NAME).read_text())


def test_manifest_is_incomplete_until_finish(tmp_path):
    writer = CaptureWriter(tmp_path, parameters())
    assert manifest_of(tmp_path)["complete"] is False
    writer.write_shard(shard_tensors(0, 5))
    m = manifest_of(tmp_path)
    assert (m["complete"], m["positions"], len(m["shards"])) == (False, 5, 1)
    writer.write_shard(shard_tensors(5, 7))
    writer.finish()
    m = manifest_of(tmp_path)
    assert m["complete"] is True and m["positions"] == 12
    assert [s["first_position"] for s in m["shards"]] == [0, 5]
    assert [s["file"] for s in m["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not list(tmp_path.glob("*.tmp"))


def test_reader_round_trip(tmp_path):
    writer = CaptureWriter(tmp_path, parameters())
    written = [shard_tensors(0, 5), shard_tensors(5, 7)]
    for t in written:
        writer.write_shard(t)
    writer.finish()
    reader = CaptureReader(tmp_path)
    for original, loaded in zip(written, reader.shards(), strict=True):
        assert set(original) == set(loaded)
        for name in original:
            assert loaded[name].dtype == original[name].dtype
            np.testing.assert_array_equal(loaded[name], original[name])


def test_reader_refuses_incomplete_capture(tmp_path):
    CaptureWriter(tmp_path, parameters()).write_shard(shard_tensors(0, 3))
    with pytest.raises(CorruptInputError):
        CaptureReader(tmp_path)
    assert CaptureReader(tmp_path, require_complete=False).manifest["positions"] == 3


def test_resume_keeps_complete_shards(tmp_path):
    first = CaptureWriter(tmp_path, parameters())
    first.write_shard(shard_tensors(0, 4))
    # An interruption after a shard rename but before the manifest update leaves a stray file.
    (tmp_path / "shard-00001.safetensors").write_bytes(b"partial")
    resumed = CaptureWriter(tmp_path, parameters())
    assert resumed.positions == 4 and not resumed.complete
    resumed.write_shard(shard_tensors(4, 8))
    resumed.finish()
    assert CaptureReader(tmp_path).manifest["positions"] == 12


def test_resume_with_other_parameters_fails_unless_restart(tmp_path):
    CaptureWriter(tmp_path, parameters()).write_shard(shard_tensors(0, 4))
    with pytest.raises(ParameterMismatchError):
        CaptureWriter(tmp_path, parameters(stride=2))
    restarted = CaptureWriter(tmp_path, parameters(stride=2), restart=True)
    assert restarted.positions == 0
    assert manifest_of(tmp_path)["stride"] == 2
    assert not (tmp_path / "shard-00000.safetensors").exists()


def test_resume_of_complete_capture_reports_complete(tmp_path):
    writer = CaptureWriter(tmp_path, parameters())
    writer.write_shard(shard_tensors(0, 4))
    writer.finish()
    assert CaptureWriter(tmp_path, parameters()).complete


def test_corrupt_shard_header_is_detected(tmp_path):
    writer = CaptureWriter(tmp_path, parameters())
    writer.write_shard(shard_tensors(0, 4))
    writer.finish()
    path = tmp_path / "shard-00000.safetensors"
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01  # inside the JSON header, same file size
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        CaptureReader(tmp_path).shard(0)
    with pytest.raises(ChecksumError):
        CaptureWriter(tmp_path, parameters())


def test_truncated_or_missing_shard_is_detected(tmp_path):
    writer = CaptureWriter(tmp_path, parameters())
    writer.write_shard(shard_tensors(0, 4))
    writer.finish()
    path = tmp_path / "shard-00000.safetensors"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptInputError):
        CaptureReader(tmp_path).shard(0)
    path.unlink()
    with pytest.raises(MissingFileError):
        CaptureReader(tmp_path).shard(0)


def test_manifest_errors_are_typed(tmp_path):
    with pytest.raises(MissingFileError):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CorruptInputError):
        load_manifest(tmp_path)


def test_writer_rejects_wrong_tensor_set(tmp_path):
    writer = CaptureWriter(tmp_path, parameters())
    tensors = shard_tensors(0, 4)
    del tensors["v.1"]
    with pytest.raises(ValueError):
        writer.write_shard(tensors)


def test_expected_tensor_shapes():
    specs = expected_tensors(parameters(), 3)
    assert specs["compact_logprobs"] == ("F16", (3, COMPACT))
    assert specs["hidden.2"] == ("F16", (3, HIDDEN))
    assert specs["q.1"] == ("F16", (3, HEADS, HEAD_DIM))
    assert specs["k.1"] == ("F16", (3, KV_HEADS, HEAD_DIM))
    assert specs["scored"] == ("U8", (3,))


def test_f16_cast_saturates():
    out = to_f16(np.array([1e6, -1e6, 1.5], dtype=np.float32))
    assert np.isfinite(out).all()
    assert out.tolist() == [65504.0, -65504.0, 1.5]
