"""SentencePiece-style tokenizer over a GGUF vocabulary (llama.cpp's ``llama`` vocab type).

The algorithm reproduces llama.cpp's SPM tokenizer for text without special-token
parsing:

1. User-defined tokens (GGUF token type 4, for Gemma: runs of newlines, spaces and
   tabs, and a few markup tokens) are split out of the raw text first, longest token
   text first, each one over all remaining raw fragments, left to right.
2. Each remaining raw fragment gets spaces replaced by U+2581 (and a leading U+2581
   only when the vocabulary asks for a space prefix; Gemma 3 does not), is split into
   UTF-8 characters, and adjacent symbols are merged greedily: always the pair whose
   concatenation is a vocabulary token with the highest score, the leftmost on ties.
3. Final symbols that are not tokens are emitted as byte tokens ``<0xXX>``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from .errors import CorruptInputError
from .gguf_model import TOKEN_TYPE_USER_DEFINED, GgufVocab

SPACE_MARK = "\u2581"


class SpmTokenizer:
    """Encode text to token ids with llama.cpp's SPM algorithm.

    Args:
        tokens: token texts, indexed by id.
        scores: merge scores, indexed by id (higher merges first).
        token_types: GGUF token types, indexed by id.
        bos_id: id prepended when ``add_bos`` is requested.
        add_space_prefix: prepend U+2581 to every raw fragment that follows a special
            token or starts the text.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        scores: Sequence[float],
        token_types: Sequence[int],
        bos_id: int,
        add_space_prefix: bool = False,
    ):
        if not len(tokens) == len(scores) == len(token_types):
            raise CorruptInputError("tokens, scores and token_types must have equal lengths")
        self.bos_id = bos_id
        self.add_space_prefix = add_space_prefix
        # Later duplicates win, as in llama.cpp's token_to_id map.
        self._token_to_id = {text: i for i, text in enumerate(tokens)}
        self._scores = [float(s) for s in scores]
        user_defined = [i for i, t in enumerate(token_types) if int(t) == TOKEN_TYPE_USER_DEFINED]
        # Longest first; equal lengths by id (a stable order for a deterministic result).
        user_defined.sort(key=lambda i: (-len(tokens[i].encode("utf-8")), i))
        self._user_defined = [(tokens[i], i) for i in user_defined if tokens[i]]
        self._byte_ids = [self._byte_token(b) for b in range(256)]
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_gguf(cls, vocab: GgufVocab) -> SpmTokenizer:
        """Build the tokenizer of a GGUF vocabulary; only the ``llama`` (SPM) model is supported."""
        if vocab.model != "llama":
            raise CorruptInputError(f"unsupported tokenizer model {vocab.model!r} (need 'llama')")
        return cls(vocab.tokens, vocab.scores, vocab.token_types, vocab.bos_id, vocab.add_space_prefix)

    def _byte_token(self, byte: int) -> int:
        """Id of the ``<0xXX>`` token of a byte, else of the one-byte ASCII token, else -1."""
        text = f"<0x{byte:02X}>"
        if text in self._token_to_id:
            return self._token_to_id[text]
        return self._token_to_id.get(chr(byte), -1) if byte < 0x80 else -1

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` (no special-token parsing), optionally after BOS."""
        output = [self.bos_id] if add_bos else []
        previous_special = True
        for fragment in self._partition(text):
            if isinstance(fragment, int):
                output.append(fragment)
                previous_special = True
                continue
            if self.add_space_prefix and previous_special:
                fragment = " " + fragment
            output.extend(self._encode_fragment(fragment.replace(" ", SPACE_MARK)))
            previous_special = False
        return output

    def _partition(self, text: str) -> list[str | int]:
        """Split user-defined tokens (ints) out of the raw text (strs)."""
        fragments: list[str | int] = [text] if text else []
        for token_text, token_id in self._user_defined:
            if token_text not in text:
                continue
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or token_text not in fragment:
                    split.append(fragment)
                    continue
                pieces = fragment.split(token_text)
                for k, piece in enumerate(pieces):
                    if k:
                        split.append(token_id)
                    if piece:
                        split.append(piece)
            fragments = split
        return fragments

    def _encode_fragment(self, text: str) -> list[int]:
        cached = self._cache.get(text)
        if cached is None:
            cached = self._merge(text)
            self._cache[text] = cached
        return cached

    def _merge(self, text: str) -> list[int]:
        """Greedy highest-score pair merging over the characters of one fragment."""
        n = len(text)
        if n == 0:
            return []
        start = list(range(n))  # symbol i covers text[start[i]:end[i]]
        end = list(range(1, n + 1))
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        token_to_id = self._token_to_id
        scores = self._scores
        queue: list[tuple[float, int, int, int]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            token = token_to_id.get(text[start[left] : end[right]])
            if token is not None:
                # (-score, left) orders by highest score, then leftmost; the length pins
                # the pair so that stale entries can be recognised when popped.
                heapq.heappush(queue, (-scores[token], left, right, end[right] - start[left]))

        for i in range(1, n):
            push(i - 1, i)
        while queue:
            _, left, right, size = heapq.heappop(queue)
            if not (alive[left] and alive[right]) or end[right] - start[left] != size or nxt[left] != right:
                continue
            end[left] = end[right]
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        output: list[int] = []
        i = 0
        while i != -1:
            piece = text[start[i] : end[i]]
            token = token_to_id.get(piece)
            if token is not None:
                output.append(token)
            else:
                for byte in piece.encode("utf-8"):
                    if self._byte_ids[byte] < 0:
                        raise CorruptInputError(f"vocabulary has no byte token for 0x{byte:02X}")
                    output.append(self._byte_ids[byte])
            i = nxt[i]
        return output
