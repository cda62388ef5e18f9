"""The captions of a text-to-image run (config.text, docs/text.md): per-example text looked up by batch['example'],
and prompts for sampling, with one-line errors for bad ones.

`TextConditioning.build` reads the data set's captions (`pipeline.load_captions`) of both splits once. Encoder
'scratch' (GLIDE): the word vocabulary of the captions (both splits) and every caption's word ids, padded to
config.text.max_length; the encoder runs inside the network, its params trained with the denoiser's. Encoder 't5'
(Imagen): the frozen T5 of config.text.t5_folder, whose embeddings of the distinct captions are computed once and
cached beside the data (`vdm.text.caption_embeddings`), so that training and evaluation only index them; prompts
at sampling time are encoded by the T5 itself. A batch's text is `batch_text(batch, split)` (the tables are
constants of the jitted step), the null condition `vdm.models.text_net.null_text`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm.config.validation import ConfigError
from vdm.data import pipeline
from vdm.text.cache import caption_embeddings, data_cache_dir
from vdm.text.encoder import TextEncoder, load_text_encoder
from vdm.text.vocab import UnknownWordError, WordVocabulary, words_of

Array = jax.Array
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class TextConditioning:
    """Per-split caption tables, the prompt encoder, and the test captions (the default prompts)."""

    encoder: str  # config.text.encoder: 'scratch' or 't5'
    max_length: int  # config.text.max_length: the longest prompt, in tokens (words for 'scratch')
    tables: dict  # split -> {'ids', 'mask'} [N, L] ('scratch') or {'sequence', 'mask', 'pooled', 'rows'} ('t5')
    vocab: WordVocabulary | None  # 'scratch': the captions' words
    frozen: TextEncoder | None  # 't5': the encoder, for prompts
    test_captions: tuple[str, ...]

    @classmethod
    def build(cls, config: ml_collections.ConfigDict) -> TextConditioning:
        """The caption tables of config.data's splits for config.text.encoder ('scratch' or 't5')."""
        t = config.text
        captions = {split: pipeline.load_captions(config.data, split) for split in SPLITS}
        longest = max(len(words_of(c)) for split in SPLITS for c in captions[split])
        if t.encoder == "scratch":
            if longest > t.max_length:
                raise ConfigError(
                    f"config.text.max_length={t.max_length} is shorter than the longest caption ({longest} words)."
                )
            # both splits' words: the test split recombines the train words, but a tiny train split may miss one
            vocab = WordVocabulary.from_captions(captions["train"] + captions["test"])
            tables = {}
            for split in SPLITS:
                ids, mask = vocab.tokenize(captions[split], length=t.max_length)
                tables[split] = {"ids": ids, "mask": mask}
            return cls("scratch", t.max_length, tables, vocab, None, tuple(captions["test"]))
        frozen = load_text_encoder(t.t5_folder)
        tables = {}
        for split in SPLITS:
            emb = caption_embeddings(frozen, captions[split], data_cache_dir(config.data))
            if emb.mask.shape[1] > t.max_length:
                raise ConfigError(
                    f"config.text.max_length={t.max_length} is shorter than the longest {split} caption "
                    f"({emb.mask.shape[1]} T5 tokens)."
                )
            tables[split] = {"sequence": emb.sequence, "mask": emb.mask, "pooled": emb.pooled}
            tables[split]["rows"] = emb.rows(captions[split])
        return cls("t5", t.max_length, tables, None, frozen, tuple(captions["test"]))

    @property
    def vocab_size(self) -> int | None:
        """The word-level encoder's embedding rows ('scratch'), None for a frozen encoder."""
        return None if self.vocab is None else self.vocab.size

    def batch_text(self, batch: dict, split: str) -> dict[str, Array]:
        """The captions of batch['example'] (examples of `split`), as the network takes them (inside jit)."""
        table, example = self.tables[split], batch["example"]
        if "rows" in table:
            rows = jnp.asarray(table["rows"])[example]
            return {k: jnp.asarray(table[k])[rows] for k in ("sequence", "mask", "pooled")}
        return {k: jnp.asarray(table[k])[example] for k in ("ids", "mask")}

    def example_text(self, batch_size: int) -> dict[str, Array]:
        """Zeros shaped like a batch's text (for init): the train table's first rows."""
        return jax.tree.map(jnp.zeros_like, self.batch_text({"example": jnp.zeros((batch_size,), jnp.int32)}, "train"))

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The text of `prompts` ([P]); ConfigError in one line for an empty, too long or (word-level) unknown prompt."""
        prompts = list(prompts)
        for p in prompts:
            if not words_of(p):
                raise ConfigError(
                    f"the prompt {p!r} is empty (no words); give a caption, e.g. {self.test_captions[0]!r}."
                )
        if self.encoder == "scratch":
            too_long = next((p for p in prompts if len(words_of(p)) > self.max_length), None)
            if too_long is not None:
                raise ConfigError(
                    f"the prompt {too_long[:60]!r}... has {len(words_of(too_long))} words, more than the encoder's "
                    f"max length {self.max_length} (config.text.max_length)."
                )
            try:
                ids, mask = self.vocab.tokenize(prompts, length=self.max_length)
            except UnknownWordError as e:
                raise ConfigError(str(e)) from None
            return {"ids": ids, "mask": mask}
        ids, mask = self.frozen.tokenize(prompts)
        lengths = mask.sum(axis=1)
        if lengths.max() > self.max_length:
            raise ConfigError(
                f"the prompt {prompts[int(lengths.argmax())][:60]!r} has {int(lengths.max())} T5 tokens, more than "
                f"the encoder's max length {self.max_length} (config.text.max_length)."
            )
        sequence, mask, pooled = self.frozen.encode_ids(ids, mask)
        return {"sequence": np.asarray(sequence), "mask": np.asarray(mask), "pooled": np.asarray(pooled)}


def read_prompts(sampling: ml_collections.ConfigDict, test_captions: Sequence[str], num: int) -> list[str]:
    """The sampling prompts: [config.sampling.prompt], the lines of sampling.prompts_file (one per grid row), or
    the first ceil(sqrt(num)) test captions (compositional: each holds a held-out pair) when neither is set."""
    if sampling.get("prompt") is not None:
        return [sampling.prompt]
    if sampling.get("prompts_file") is not None:
        try:
            with open(sampling.prompts_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise ConfigError(f"cannot read config.sampling.prompts_file={sampling.prompts_file!r}: {e}.") from None
        if not lines:
            raise ConfigError(f"config.sampling.prompts_file={sampling.prompts_file!r} holds no prompt.")
        return lines
    return list(test_captions[: math.ceil(math.sqrt(num))])
