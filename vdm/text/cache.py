"""A frozen text encoder's embeddings of a caption set, computed once and cached beside the data, so that
training conditions on them without running the encoder (Imagen trains on precomputed T5 embeddings).

    emb = caption_embeddings(encoder, captions, data_cache_dir(config.data))
    rows = emb.rows(captions)          # int32 [N]: each caption's row of emb.sequence / emb.mask / emb.pooled

The cache holds one row per distinct caption (sorted), all padded to the longest one's token count. Its file,
FOLDER/embeddings-KEY.npz, is keyed by the encoder's fingerprint (its config, tokenizer and weights:
TextEncoder.fingerprint) and the caption set; another encoder or another caption set gets another file. A file
that fails to read or whose recorded captions or fingerprint differ is recomputed (with a warning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vdm.data import pipeline
from vdm.data.tfds_sets import resolve_data_dir
from vdm.infra.fileio import atomic_write
from vdm.text.encoder import TextEncoder

CACHE_SUBDIR = "vdm_text"


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionEmbeddings:
    """An encoder's (sequence, mask, pooled) of distinct captions: row c belongs to captions[c]."""

    captions: tuple[str, ...]  # distinct, sorted
    sequence: np.ndarray  # float32 [C, L, d]
    mask: np.ndarray  # bool [C, L]
    pooled: np.ndarray  # float32 [C, d]
    fingerprint: str  # the encoder's

    def rows(self, captions: Sequence[str]) -> np.ndarray:
        """int32 [N]: the row of each caption (KeyError naming one that the cache does not hold)."""
        index = {c: i for i, c in enumerate(self.captions)}
        missing = next((c for c in captions if c not in index), None)
        if missing is not None:
            raise KeyError(f"caption {missing!r} is not among the {len(self.captions)} cached captions.")
        return np.array([index[c] for c in captions], np.int32)


def cache_key(encoder: TextEncoder, captions: Sequence[str]) -> str:
    """sha256 of the encoder's fingerprint and the distinct captions (sorted, newline-joined): the cache file's key."""
    distinct = sorted(set(captions))
    return hashlib.sha256(
        f"{encoder.fingerprint}\n{len(distinct)}\n".encode() + "\n".join(distinct).encode()
    ).hexdigest()


def data_cache_dir(data_config: Mapping | Any) -> str:
    """DATA_DIR/NAME/vdm_text for config.data: beside the data set's files (and its vdm_arrays cache)."""
    name = pipeline.parse_config(data_config).name
    data_dir = data_config.get("data_dir") if hasattr(data_config, "get") else None
    return os.path.join(resolve_data_dir(data_dir), name, CACHE_SUBDIR)


def _compute(encoder: TextEncoder, captions: tuple[str, ...], batch_size: int) -> dict[str, np.ndarray]:
    """Encode the captions in batches of batch_size at one padded length (the last batch filled, so one compile)."""
    ids, mask = encoder.tokenize(list(captions))
    out: dict[str, list[np.ndarray]] = {"sequence": [], "mask": [], "pooled": []}
    for start in range(0, len(captions), batch_size):
        rows = np.arange(start, start + batch_size) % len(captions)
        sequence, m, pooled = encoder.encode_ids(ids[rows], mask[rows])
        keep = min(batch_size, len(captions) - start)
        for name, value in zip(("sequence", "mask", "pooled"), (sequence, m, pooled)):
            out[name].append(np.asarray(value)[:keep])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _read(path: str, captions: tuple[str, ...], fingerprint: str) -> CaptionEmbeddings | None:
    """The cache file, or None when absent, unreadable or not of these captions and this encoder (then warns)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            stored = tuple(str(c) for c in f["captions"])
            if stored != captions or str(f["fingerprint"]) != fingerprint:
                raise ValueError("its captions or encoder fingerprint differ from the requested ones")
            arrays = {k: f[k] for k in ("sequence", "mask", "pooled")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"recomputing the caption embeddings {path}: {err}", stacklevel=3)
        return None
    return CaptionEmbeddings(captions, fingerprint=fingerprint, **arrays)


def caption_embeddings(
    encoder: TextEncoder, captions: Sequence[str], folder: str, *, batch_size: int = 64
) -> CaptionEmbeddings:
    """The encoder's embeddings of the distinct captions: read from FOLDER/embeddings-KEY.npz, else computed and written there."""
    distinct = tuple(sorted(set(captions)))
    if not distinct:
        raise ValueError("caption_embeddings needs at least one caption.")
    fingerprint = encoder.fingerprint
    path = os.path.join(folder, f"embeddings-{cache_key(encoder, distinct)[:24]}.npz")
    cached = _read(path, distinct, fingerprint)
    if cached is not None:
        return cached
    arrays = _compute(encoder, distinct, batch_size)
    record = dict(arrays, captions=np.array(distinct), fingerprint=np.array(fingerprint))
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **record), binary=True)
    except OSError as err:  # a read-only data folder loses only the reuse
        warnings.warn(f"could not write the caption embeddings cache {path}: {err}", stacklevel=2)
    return CaptionEmbeddings(distinct, fingerprint=fingerprint, **arrays)
