"""A HuggingFace tokenizer.json (read by the `tokenizers` package) as vdm's tokenizers are used: a batch of
prompts -> (ids int32 [B, L], mask bool [B, L]), padded with pad_id to the batch's longest text.

For a T5 folder the tokenizer.json carries T5's own pipeline (SentencePiece Unigram pieces, '</s>' appended by
its post-processor), so the ids are those transformers' T5 tokenizer gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import tokenizers


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list of str; a bare string (whose characters would be the batch) is refused."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}: {prompts!r:.80}")
    return list(prompts)


class HFTokenizer:
    """tokenizer.json -> ids, padded with pad_id to the longest prompt; with max_length, truncated (eos kept)."""

    def __init__(self, path: str, *, pad_id: int = 0, max_length: int | None = None):
        self.path = path
        with open(path, "rb") as f:
            self._digest = hashlib.sha256(f.read()).hexdigest()
        self._tokenizer = tokenizers.Tokenizer.from_file(path)
        pad_token = self._tokenizer.id_to_token(pad_id)
        if pad_token is None:
            raise ValueError(f"{path} has no token of pad id {pad_id}.")
        self.pad_id, self.max_length = pad_id, max_length
        self._tokenizer.no_truncation()
        if max_length is not None:
            self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (added tokens included)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """prompts [B] -> (ids int32 [B, L], mask bool [B, L]), L = the longest prompt's token count."""
        prompts = check_prompts(prompts)
        if not prompts:
            return np.zeros((0, 0), np.int32), np.zeros((0, 0), bool)
        encodings = self._tokenizer.encode_batch(prompts)
        ids = np.array([e.ids for e in encodings], np.int32)
        mask = np.array([e.attention_mask for e in encodings], bool)
        return ids, mask

    def fingerprint(self) -> str:
        """sha256 of the tokenizer.json bytes, the pad id and max_length."""
        return hashlib.sha256(f"{self._digest}|{self.pad_id}|{self.max_length}".encode()).hexdigest()
