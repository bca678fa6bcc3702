"""Read a Gemma 3 GGUF file: hyperparameters, vocabulary and float32 weights.

Every hyperparameter comes from the GGUF metadata. Two values that the Gemma 3
GGUF files do not store fall back to the defaults that llama.cpp applies to the
``gemma3`` architecture: the sliding-window layer pattern (every 6th layer is
global) and the RoPE base of sliding-window layers (10,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CorruptInputError, MissingFileError

DEFAULT_SWA_PATTERN = 6
DEFAULT_SWA_ROPE_BASE = 10000.0

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6


@dataclass(frozen=True)
class ModelConfig:
    """Gemma 3 hyperparameters as read from GGUF metadata."""

    architecture: str
    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    norm_eps: float
    rope_base_global: float
    rope_base_local: float
    rope_scale: float
    sliding_window: int
    swa_layers: tuple[bool, ...]
    attention_scale: float
    final_logit_softcap: float

    def as_manifest(self) -> dict:
        """The ``model`` fields of a capture manifest (file and sha256 added by the caller)."""
        return {
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer section of a GGUF file."""

    model: str
    tokens: list[str]
    scores: np.ndarray
    token_types: np.ndarray
    bos_id: int
    eos_id: int
    add_bos: bool
    add_space_prefix: bool


class GgufFile:
    """A GGUF file opened for reading (memory-mapped by the gguf package)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"GGUF model not found: {self.path}")
        try:
            self._reader = GGUFReader(str(self.path))
        except (ValueError, OSError) as exc:
            raise CorruptInputError(f"cannot parse GGUF file {self.path}: {exc}") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}

    def field(self, key: str, default=None):
        """Return a metadata value; raise CorruptInputError if absent and no default given."""
        field = self._reader.fields.get(key)
        if field is None:
            if default is None:
                raise CorruptInputError(f"GGUF metadata key missing: {key} in {self.path}")
            return default
        return field.contents()

    def config(self) -> ModelConfig:
        """Build the ModelConfig of a ``gemma3`` GGUF file."""
        arch = self.field("general.architecture")
        if arch != "gemma3":
            raise CorruptInputError(f"expected architecture 'gemma3', got {arch!r} in {self.path}")
        n_layers = int(self.field(f"{arch}.block_count"))
        hidden = int(self.field(f"{arch}.embedding_length"))
        n_heads = int(self.field(f"{arch}.attention.head_count"))
        head_dim = int(self.field(f"{arch}.attention.key_length"))
        value_dim = int(self.field(f"{arch}.attention.value_length"))
        if value_dim != head_dim:
            raise CorruptInputError(f"key_length {head_dim} != value_length {value_dim}")
        pattern = int(self.field(f"{arch}.attention.sliding_window_pattern", DEFAULT_SWA_PATTERN))
        # llama.cpp: layer il uses the sliding window iff il % pattern < pattern - 1.
        swa_layers = tuple(il % pattern < pattern - 1 for il in range(n_layers))
        # Gemma 3 scales queries by query_pre_attn_scalar**-0.5, which equals head_dim for
        # every size except 27B (62 layers), where it is hidden / n_heads (as in llama.cpp).
        query_pre_attn_scalar = float(hidden // n_heads if n_layers == 62 else head_dim)
        return ModelConfig(
            architecture=arch,
            n_layers=n_layers,
            hidden_size=hidden,
            ffn_size=int(self.field(f"{arch}.feed_forward_length")),
            n_heads=n_heads,
            n_kv_heads=int(self.field(f"{arch}.attention.head_count_kv")),
            head_dim=head_dim,
            vocab_size=len(self.field("tokenizer.ggml.tokens")),
            norm_eps=float(self.field(f"{arch}.attention.layer_norm_rms_epsilon")),
            rope_base_global=float(self.field(f"{arch}.rope.freq_base")),
            rope_base_local=float(self.field(f"{arch}.rope.freq_base_swa", DEFAULT_SWA_ROPE_BASE)),
            rope_scale=1.0 / float(self.field(f"{arch}.rope.scaling.factor", 1.0)),
            sliding_window=int(self.field(f"{arch}.attention.sliding_window")),
            swa_layers=swa_layers,
            attention_scale=query_pre_attn_scalar**-0.5,
            final_logit_softcap=float(self.field(f"{arch}.final_logit_softcapping", 0.0)),
        )

    def vocab(self) -> GgufVocab:
        """Read the tokenizer vocabulary (tokens, scores, types, special ids)."""
        tokens = list(self.field("tokenizer.ggml.tokens"))
        scores = np.asarray(self.field("tokenizer.ggml.scores"), dtype=np.float32)
        types = np.asarray(self.field("tokenizer.ggml.token_type"), dtype=np.int32)
        if not len(tokens) == len(scores) == len(types):
            raise CorruptInputError("tokenizer tokens/scores/token_type lengths differ")
        return GgufVocab(
            model=str(self.field("tokenizer.ggml.model")),
            tokens=tokens,
            scores=scores,
            token_types=types,
            bos_id=int(self.field("tokenizer.ggml.bos_token_id")),
            eos_id=int(self.field("tokenizer.ggml.eos_token_id")),
            add_bos=bool(self.field("tokenizer.ggml.add_bos_token", True)),
            add_space_prefix=bool(self.field("tokenizer.ggml.add_space_prefix", True)),
        )

    def tensor(self, name: str) -> np.ndarray:
        """Dequantize one tensor to float32 in row-major (numpy) order, e.g. [out, in]."""
        from gguf.quants import dequantize

        tensor = self._tensors.get(name)
        if tensor is None:
            raise CorruptInputError(f"GGUF tensor missing: {name} in {self.path}")
        array = dequantize(tensor.data, tensor.tensor_type)
        expected = tuple(int(d) for d in reversed(tensor.shape))
        array = np.ascontiguousarray(array, dtype=np.float32).reshape(expected)
        return array

    def has_tensor(self, name: str) -> bool:
        """Whether the file holds a tensor of this name."""
        return name in self._tensors

    def tensor_names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._tensors)

    def metadata(self) -> dict:
        """The raw metadata fields (gguf ReaderField objects) by key."""
        return dict(self._reader.fields)
