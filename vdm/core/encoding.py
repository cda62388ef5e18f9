"""How 8-bit values k = 0..255 sit in [-1, 1]: the grid every discrete-data formula depends on.

'endpoints':   x_k = k/127.5 - 1, the grid's ends at -1 and 1, spacing 2/255 (this project's default).
'bin_centres': x_k = (k + 1/2)/128 - 1, the centres of 256 equal bins tiling [-1, 1], spacing 2/256
               (google-research/vdm's EncDec.encode: 2 (k + 0.5)/256 - 1).
Both give exact discrete likelihoods; they differ only in where the decoder's 256 means sit and
in the dequantisation bin width. `encode`/`decode` are numpy (data pipelines, PNGs);
`grid_values`/`bin_index` are their jax-traceable counterparts (the decoders).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ENCODINGS = ("endpoints", "bin_centres")
NUM_LEVELS = 256


def check_encoding(encoding: str) -> str:
    """Return `encoding` if it is one of ENCODINGS, else raise ValueError naming them."""
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown data encoding {encoding!r}; valid: {', '.join(ENCODINGS)}.")
    return encoding


def bin_width(encoding: str) -> float:
    """Spacing Delta of the grid: 2/255 ('endpoints') or 2/256 ('bin_centres')."""
    return 2.0 / (NUM_LEVELS - 1) if check_encoding(encoding) == "endpoints" else 2.0 / NUM_LEVELS


def lowest_value(encoding: str) -> float:
    """x_0: -1 ('endpoints') or -1 + 1/256 ('bin_centres')."""
    return -1.0 if check_encoding(encoding) == "endpoints" else -1.0 + 1.0 / NUM_LEVELS


def encode(k: Any, encoding: str = "endpoints") -> np.ndarray:
    """8-bit k -> x_k, float32 numpy: k/127.5 - 1 or (k + 0.5)/128 - 1 (both exact in float32 for k in 0..255)."""
    k = np.asarray(k).astype(np.float32)
    if check_encoding(encoding) == "endpoints":
        return k / np.float32(127.5) - np.float32(1.0)
    return (k + np.float32(0.5)) / np.float32(128.0) - np.float32(1.0)


def decode(x: Any, encoding: str = "endpoints") -> np.ndarray:
    """x in [-1, 1] -> nearest 8-bit k (uint8, clipped): round((x - x_0) / Delta), in float64 for float64 x, else float32."""
    x = np.asarray(x)
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
    if check_encoding(encoding) == "endpoints":
        k = np.round((x + 1.0) * 127.5)
    else:
        k = np.round((x + 1.0) * 128.0 - 0.5)
    return np.clip(k, 0, NUM_LEVELS - 1).astype(np.uint8)


def grid_values(encoding: str = "endpoints", dtype: Any = jnp.float32) -> jax.Array:
    """The 256 values x_k as a jax array of `dtype`: k/127.5 - 1 ('endpoints') or (k + 0.5)/128 - 1 ('bin_centres')."""
    k = jnp.arange(NUM_LEVELS, dtype=dtype)
    if check_encoding(encoding) == "endpoints":
        return k / (0.5 * (NUM_LEVELS - 1)) - 1.0
    return (k + 0.5) / (0.5 * NUM_LEVELS) - 1.0


def bin_index(x: Any, encoding: str = "endpoints") -> jax.Array:
    """x in [-1, 1] -> nearest k, int32 jax array (traceable), clipped: round((x - x_0) / Delta)."""
    x = jnp.asarray(x)
    if check_encoding(encoding) == "endpoints":
        k = jnp.round((x + 1.0) * 0.5 * (NUM_LEVELS - 1))
    else:
        k = jnp.round((x + 1.0) * 0.5 * NUM_LEVELS - 0.5)
    return jnp.clip(k, 0, NUM_LEVELS - 1).astype(jnp.int32)


def bits_per_dim(nats, num_dims: int):
    """bits/dim = nats / (D ln 2) (numpy in, numpy out; jax in, jax out)."""
    return nats / (num_dims * math.log(2.0))
