"""A word-level vocabulary built from a data set's captions: the tokenizer of the text encoder trained from
scratch (vdm.text.scratch). Words are the lower-cased runs of letters and digits (inner hyphens and
apostrophes kept: "t-shirt" is one word); id 0 is padding, words get 1..V-1 in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

from vdm.text.tokenizer import check_prompts

PAD_ID = 0
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def words_of(text: str) -> list[str]:
    """The words of `text`: lower-cased, punctuation dropped ("A T-shirt, please!" -> a, t-shirt, please)."""
    return _WORD.findall(text.lower())


class UnknownWordError(ValueError):
    """A prompt holds a word that is not in the vocabulary; the message names it and the vocabulary's size."""


class WordVocabulary:
    """Word -> id (pad 0; words 1..V-1, sorted); tokenize pads to the longest prompt or to `length`."""

    def __init__(self, words: Iterable[str]):
        words = sorted(set(words))
        bad = [w for w in words if words_of(w) != [w]]
        if bad:
            raise ValueError(f"not words of the vocabulary's form (lower-case letters and digits): {bad[:5]}")
        self.words = tuple(words)
        self._ids = {w: i + 1 for i, w in enumerate(self.words)}

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> WordVocabulary:
        """The vocabulary of every word in `captions`."""
        return cls(w for c in captions for w in words_of(c))

    @property
    def size(self) -> int:
        """V = number of words + 1 (the pad id 0): the embedding table's rows."""
        return len(self.words) + 1

    def tokenize(self, prompts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """prompts [B] -> (ids int32 [B, L], mask bool [B, L]); L = the longest prompt's word count, or `length`."""
        prompts = check_prompts(prompts)
        rows = [[self._id(w, p) for w in words_of(p)] for p in prompts]
        longest = max((len(r) for r in rows), default=0)
        length = longest if length is None else length
        if longest > length:
            raise ValueError(f"a prompt has {longest} words, more than the length {length}.")
        ids = np.full((len(rows), length), PAD_ID, np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return ids, ids != PAD_ID

    def _id(self, word: str, prompt: str) -> int:
        if word not in self._ids:
            raise UnknownWordError(
                f"unknown word {word!r} in prompt {prompt!r}: the vocabulary has {len(self.words)} words "
                f"(vocabulary size {self.size} with the pad id), those of the captions it was built from."
            )
        return self._ids[word]

    def to_json(self) -> str:
        """The vocabulary as JSON ({'words': [...]}), to keep with a trained model."""
        return json.dumps({"words": list(self.words)})

    @classmethod
    def from_json(cls, text: str) -> WordVocabulary:
        """The vocabulary of to_json's text."""
        return cls(json.loads(text)["words"])

    def fingerprint(self) -> str:
        """sha256 of the sorted words."""
        return hashlib.sha256("\n".join(self.words).encode()).hexdigest()
