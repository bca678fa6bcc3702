"""Corpus loading and tokenization shared by the capture and the reference tools."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CorruptInputError, MissingFileError
from .hashing import sha256_file
from .tokenizer import SpmTokenizer


@dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus file tokenized as one text (no BOS) and cut to its first ``tokens_used`` tokens."""

    path: Path
    sha256: str
    tokens: np.ndarray  # int32 [tokens_used]
    tokens_total: int

    def as_manifest(self) -> dict:
        """The ``corpus`` entry of a capture manifest."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "tokens_total": self.tokens_total,
            "tokens_used": int(self.tokens.shape[0]),
        }


def read_text(path: Path) -> str:
    """Read a UTF-8 text file exactly (no newline translation)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"corpus file not found: {path}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptInputError(f"{path} is not valid UTF-8: {exc}") from exc


def tokenize_corpus(path: Path, tokenizer: SpmTokenizer, max_tokens: int | None) -> TokenizedCorpus:
    """Tokenize the whole file as one text and keep the first ``max_tokens`` tokens."""
    path = Path(path)
    ids = np.asarray(tokenizer.encode(read_text(path)), dtype=np.int32)
    used = ids if max_tokens is None else ids[:max_tokens]
    if used.shape[0] == 0:
        raise CorruptInputError(f"{path} yields no tokens")
    return TokenizedCorpus(path, sha256_file(path), used, int(ids.shape[0]))
