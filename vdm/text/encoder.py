"""One interface over vdm's text encoders: a tokenizer, a Flax module and its params.

    encoder = load_text_encoder("/path/to/flan-t5-base")      # a HuggingFace T5 folder, frozen
    sequence, mask, pooled = encoder.encode(["a small red circle at the top left"])
    # sequence [B, L, d] (the last hidden states, after the final norm), mask [B, L] bool, pooled [B, d]

Both kinds of encoder give that triple: the frozen T5 (vdm.text.t5, Imagen's: Saharia et al. 2022) and the one
trained from scratch (vdm.text.scratch, GLIDE's), `TextEncoder(WordVocabulary, ScratchTextEncoder, params)`.
A network cross-attends to `sequence` where `mask` is True and may add `pooled` to its time embedding; a
jointly trained encoder calls `encoder.module.apply(params, ids, mask)` inside the loss with its trained params.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np
import safetensors
from safetensors import safe_open

from vdm.text.t5 import T5Config, T5Encoder, params_from_hf
from vdm.text.tokenizer import HFTokenizer

_CONFIG_FILE, _WEIGHTS_FILE, _WEIGHTS_INDEX, _TOKENIZER_FILE = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
)


class EncoderFolderError(ValueError):
    """A text encoder folder is missing, incomplete or corrupt; the message names the folder and what is wrong."""


class Tokenizer(Protocol):
    """What TextEncoder needs of a tokenizer (HFTokenizer, vocab.WordVocabulary)."""

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """prompts [B] -> (ids int32 [B, L], mask bool [B, L])."""

    def fingerprint(self) -> str:
        """A hash of everything that decides the ids."""


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
    """A tokenizer, a module (ids, mask) -> (sequence, mask, pooled) and its params: encode(prompts) runs the three."""

    tokenizer: Tokenizer
    module: nn.Module
    params: Any  # the module's params tree ({'params': ...} is unwrapped by apply below)

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda params, ids, mask: self.module.apply({"params": params}, ids, mask))

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """prompts [B] -> (ids int32 [B, L], mask bool [B, L]), the tokenizer's own padding."""
        return self.tokenizer.tokenize(prompts)

    def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(ids [B, L], mask [B, L]) -> (sequence [B, L, d], mask [B, L] bool, pooled [B, d]) at self.params."""
        return self._apply(self.params, np.asarray(ids, np.int32), np.asarray(mask, bool))

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """prompts [B] -> (sequence [B, L, d], mask [B, L] bool, pooled [B, d] = masked mean of the sequence)."""
        return self.encode_ids(*self.tokenize(prompts))

    @property
    def dim(self) -> int:
        """d, the width of sequence and pooled."""
        ids, mask = np.zeros((1, 1), np.int32), np.ones((1, 1), bool)
        return int(jax.eval_shape(self._apply, self.params, ids, mask)[0].shape[-1])

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the module's class and fields, the tokenizer's fingerprint and every parameter's bytes."""
        h = hashlib.sha256()
        fields = {f.name: getattr(self.module, f.name) for f in dataclasses.fields(self.module)}
        fields = {k: v for k, v in fields.items() if k not in ("parent", "name")}
        h.update(type(self.module).__name__.encode())
        h.update(json.dumps(fields, sort_keys=True, default=_jsonable).encode())
        h.update(self.tokenizer.fingerprint().encode())
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
            leaf = np.asarray(leaf)
            h.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}".encode())
            h.update(np.ascontiguousarray(leaf).tobytes())
        return h.hexdigest()


def _jsonable(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else repr(value)


def _read_config(folder: str) -> T5Config:
    path = os.path.join(folder, _CONFIG_FILE)
    try:
        with open(path) as f:
            return T5Config.from_json(json.load(f))
    except json.JSONDecodeError as err:
        raise EncoderFolderError(f"{path} is not valid JSON: {err}") from err
    except KeyError as err:
        raise EncoderFolderError(f"{path} lacks the key {err} of a T5 config") from err
    except ValueError as err:
        raise EncoderFolderError(f"{path}: {err}") from err


def _weight_files(folder: str) -> list[str]:
    """model.safetensors, or the shards that model.safetensors.index.json names."""
    if os.path.exists(os.path.join(folder, _WEIGHTS_FILE)):
        return [os.path.join(folder, _WEIGHTS_FILE)]
    index = os.path.join(folder, _WEIGHTS_INDEX)
    try:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as err:
        raise EncoderFolderError(f"{index} is not a safetensors index (a 'weight_map'): {err}") from err
    missing = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
    if missing:
        raise EncoderFolderError(f"{folder} lacks the weight shards {', '.join(missing)} that {_WEIGHTS_INDEX} names")
    return [os.path.join(folder, s) for s in shards]


def _read_encoder_tensors(folder: str) -> dict[str, np.ndarray]:
    """The encoder's tensors (names 'shared.*' and 'encoder.*'; a decoder's are not read) as numpy arrays."""
    tensors = {}
    for path in _weight_files(folder):
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    if name.startswith(("shared.", "encoder.")):
                        tensors[name] = f.get_tensor(name)
        except (OSError, safetensors.SafetensorError) as err:
            raise EncoderFolderError(f"{path} is not a readable safetensors file: {err}") from err
    return tensors


def load_text_encoder(folder: str, *, max_length: int | None = None) -> TextEncoder:
    """The frozen T5 encoder of a HuggingFace checkpoint folder (config.json, model.safetensors, tokenizer.json).

    Equal as a function to transformers' T5EncoderModel at the tokenizer's ids (tests/test_text.py);
    max_length truncates prompts to that many tokens ('</s>' kept). EncoderFolderError names what is missing.
    """
    folder = os.path.abspath(os.path.expanduser(str(folder)))
    if not os.path.isdir(folder):
        raise EncoderFolderError(f"text encoder folder {folder} does not exist (a HuggingFace T5 checkpoint folder).")
    has_weights = any(os.path.exists(os.path.join(folder, f)) for f in (_WEIGHTS_FILE, _WEIGHTS_INDEX))
    missing = [f for f in (_CONFIG_FILE, _TOKENIZER_FILE) if not os.path.exists(os.path.join(folder, f))]
    missing += [] if has_weights else [_WEIGHTS_FILE]
    if missing:
        raise EncoderFolderError(
            f"text encoder folder {folder} lacks {', '.join(missing)} "
            f"(a HuggingFace T5 checkpoint folder holds {_CONFIG_FILE}, {_WEIGHTS_FILE} and {_TOKENIZER_FILE})."
        )
    config = _read_config(folder)
    try:
        params = params_from_hf(_read_encoder_tensors(folder), config)
    except (KeyError, ValueError) as err:
        raise EncoderFolderError(f"the weights in {folder} do not fit its {_CONFIG_FILE}: {err.args[0]}") from err
    path = os.path.join(folder, _TOKENIZER_FILE)
    try:
        tokenizer = HFTokenizer(path, pad_id=config.pad_id, max_length=max_length)
    except Exception as err:  # tokenizers raises its own Exception subclasses for a corrupt file
        raise EncoderFolderError(f"{path} is not a readable tokenizers file: {err}") from err
    if tokenizer.vocab_size > config.vocab_size:
        raise EncoderFolderError(
            f"{path} has {tokenizer.vocab_size} ids but {_CONFIG_FILE} gives vocab_size {config.vocab_size}."
        )
    return TextEncoder(tokenizer, T5Encoder(config), params)
