"""The T5 encoder in Flax (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", JMLR 21(140)),
v1.1 / Flan-T5 variant (gated-GELU feed-forward, Shazeer 2020), and HuggingFace's parameter layout of it.

    h_0 = E[ids]                                              (no scaling of the embedding)
    per block: h += Attn(RMS(h)),  h += FF(RMS(h))            (pre-norm residual blocks)
    sequence = RMS_final(h_N)                                 (the encoder's last hidden states)

RMS(h) = w * h / sqrt(mean(h^2) + eps) (T5LayerNorm: no mean subtraction, no bias). Attention logits are
q k^T + b(j - i) + mask, with no 1/sqrt(d_kv) (T5 folds it into the initialisation) and one relative position
bias b, a learned [num_buckets, heads] table of the first block shared by every block. FF is
wo(act(wi_0 h) * wi_1 h) when gated ('gated-gelu': act = gelu_new, the tanh approximation), else wo(act(wi h)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm.text.pooling import masked_mean

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # x Phi(x)
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder's hyperparameters, as HuggingFace's config.json names them (T5Config.from_json reads it)."""

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    num_buckets: int = 32  # relative_attention_num_buckets (both directions together)
    max_distance: int = 128  # relative_attention_max_distance
    eps: float = 1e-6  # layer_norm_epsilon
    activation: str = "gelu_new"  # dense_act_fn
    gated: bool = True  # is_gated_act: wo(act(wi_0 h) * wi_1 h); else wo(act(wi h))
    pad_id: int = 0

    @classmethod
    def from_json(cls, cfg: Mapping[str, Any]) -> T5Config:
        """The config of a HuggingFace T5 config.json dict (feed_forward_proj 'gated-gelu' -> gated gelu_new)."""
        if cfg.get("model_type", "t5") != "t5":
            raise ValueError(f"model_type {cfg.get('model_type')!r} is not supported; only 't5' (v1.0, v1.1, Flan-T5).")
        proj = str(cfg.get("feed_forward_proj", "relu")).split("-")
        gated = proj[0] == "gated"
        activation = cfg.get("dense_act_fn") or ("gelu_new" if proj == ["gated", "gelu"] else proj[-1])
        if activation not in ACTIVATIONS:
            raise ValueError(f"dense_act_fn {activation!r} is not supported; valid: {', '.join(ACTIVATIONS)}.")
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["d_model"]),
            d_kv=int(cfg["d_kv"]),
            num_heads=int(cfg["num_heads"]),
            d_ff=int(cfg["d_ff"]),
            num_layers=int(cfg["num_layers"]),
            num_buckets=int(cfg.get("relative_attention_num_buckets", 32)),
            max_distance=int(cfg.get("relative_attention_max_distance", 128)),
            eps=float(cfg.get("layer_norm_epsilon", 1e-6)),
            activation=activation,
            gated=gated,
            pad_id=int(cfg.get("pad_token_id", 0)),
        )


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucket of j - i (Raffel et al. 2020, sec. 2.1; Mesh TensorFlow's
    _relative_position_bucket): half the buckets per sign; |r| < n/2 exact (n = num_buckets/2), beyond that
    n/2 + floor(log(|r| / (n/2)) / log(max_distance / (n/2)) * n/2), capped at n - 1; in float32, as T5's code.
    """
    r = np.asarray(relative_position, np.int64)
    n = num_buckets // 2
    buckets = (r > 0).astype(np.int64) * n
    r = np.abs(r)
    max_exact = n // 2
    safe = np.maximum(r, max_exact).astype(np.float32)  # r < max_exact takes the exact branch below
    scaled = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (scaled * np.float32(n - max_exact)).astype(np.int64)  # truncation, as .to(long)
    return (buckets + np.where(r < max_exact, r, np.minimum(large, n - 1))).astype(np.int32)


class T5Norm(nn.Module):
    """RMS norm (Zhang & Sennrich 2019; T5LayerNorm): w * h / sqrt(mean(h^2) + eps), no mean, no bias."""

    eps: float

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """h: [..., d] -> [..., d], the statistic in float32."""
        scale = self.param("scale", nn.initializers.ones, (h.shape[-1],))
        variance = jnp.mean(jnp.square(h.astype(jnp.float32)), axis=-1, keepdims=True)
        return scale * (h * jax.lax.rsqrt(variance + self.eps))


class T5Attention(nn.Module):
    """Multi-head self-attention without 1/sqrt(d_kv) scaling: softmax(q k^T + bias) v, projections q, k, v, o."""

    config: T5Config

    @nn.compact
    def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
        """h: [B, L, d]; bias: [B or 1, H, L, L] (relative position bias, then the mask's) -> [B, L, d]."""
        c = self.config
        dense = lambda features, name: nn.Dense(features, use_bias=False, name=name)
        split = lambda x: x.reshape(*x.shape[:2], c.num_heads, c.d_kv)  # [B, L, H, d_kv]
        q, k, v = (split(dense(c.num_heads * c.d_kv, n)(h)) for n in ("q", "k", "v"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*h.shape[:2], c.num_heads * c.d_kv)
        return dense(c.d_model, "o")(out)


class T5FeedForward(nn.Module):
    """wo(act(wi_0 h) * wi_1 h) when gated (T5 v1.1; Shazeer 2020, "GLU Variants"), else wo(act(wi h))."""

    config: T5Config

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """h: [B, L, d] -> [B, L, d]."""
        c = self.config
        act = ACTIVATIONS[c.activation]
        dense = lambda features, name: nn.Dense(features, use_bias=False, name=name)
        if c.gated:
            inner = act(dense(c.d_ff, "wi_0")(h)) * dense(c.d_ff, "wi_1")(h)
        else:
            inner = act(dense(c.d_ff, "wi")(h))
        return dense(c.d_model, "wo")(inner)


class T5Block(nn.Module):
    """One pre-norm encoder block: h + Attn(RMS(h)), then h + FF(RMS(h))."""

    config: T5Config

    @nn.compact
    def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
        """h: [B, L, d], bias: [B or 1, H, L, L] -> [B, L, d]."""
        c = self.config
        h = h + T5Attention(c, name="attention")(T5Norm(c.eps, name="attention_norm")(h), bias)
        return h + T5FeedForward(c, name="mlp")(T5Norm(c.eps, name="mlp_norm")(h))


class T5Encoder(nn.Module):
    """The T5 encoder stack: (ids [B, L], mask [B, L]) -> (sequence [B, L, d], mask, pooled [B, d]).

    sequence is the last hidden states after the final RMS norm; pooled is the mask-weighted mean of the
    sequence (text.pooling.masked_mean). A masked key gets logit bias float32.min, as T5's code adds it.
    """

    config: T5Config

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """ids int [B, L], mask bool [B, L] -> (sequence [B, L, d], mask [B, L], pooled [B, d])."""
        c = self.config
        assert ids.ndim == 2 and mask.shape == ids.shape, (ids.shape, mask.shape)
        length = ids.shape[1]
        h = nn.Embed(c.vocab_size, c.d_model, name="embed")(ids)
        positions = np.arange(length)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], c.num_buckets, c.max_distance)
        table = self.param("relative_bias", nn.initializers.normal(1.0), (c.num_buckets, c.num_heads))
        position_bias = jnp.transpose(table[buckets], (2, 0, 1))[None]  # [1, H, L, L]
        mask_bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]  # [B, 1, 1, L]
        bias = position_bias + mask_bias
        for i in range(c.num_layers):
            h = T5Block(c, name=f"block_{i}")(h, bias)
        sequence = T5Norm(c.eps, name="final_norm")(h)
        return sequence, mask, masked_mean(sequence, mask)


def _hf_names(config: T5Config) -> dict[tuple[str, ...], tuple[str, bool]]:
    """{flax parameter path: (HuggingFace tensor name, transpose)}: torch Linear stores [out, in], Dense [in, out]."""
    names = {
        ("embed", "embedding"): ("shared.weight", False),
        ("relative_bias",): ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),
        ("final_norm", "scale"): ("encoder.final_layer_norm.weight", False),
    }
    mlp = ("wi_0", "wi_1", "wo") if config.gated else ("wi", "wo")
    for i in range(config.num_layers):
        hf, block = f"encoder.block.{i}.layer", f"block_{i}"
        names[(block, "attention_norm", "scale")] = (f"{hf}.0.layer_norm.weight", False)
        names[(block, "mlp_norm", "scale")] = (f"{hf}.1.layer_norm.weight", False)
        for p in ("q", "k", "v", "o"):
            names[(block, "attention", p, "kernel")] = (f"{hf}.0.SelfAttention.{p}.weight", True)
        for p in mlp:
            names[(block, "mlp", p, "kernel")] = (f"{hf}.1.DenseReluDense.{p}.weight", True)
    return names


def params_from_hf(tensors: Mapping[str, np.ndarray], config: T5Config) -> dict:
    """T5Encoder params from HuggingFace T5 tensors (T5EncoderModel or T5ForConditionalGeneration names).

    The token embedding is 'shared.weight' or, where a checkpoint keeps only that copy,
    'encoder.embed_tokens.weight'. Raises KeyError naming the missing tensors, ValueError a wrong shape.
    """
    tensors = dict(tensors)
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    shapes = jax.eval_shape(
        lambda: T5Encoder(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
    )["params"]
    names = _hf_names(config)
    missing = sorted(name for name, _ in names.values() if name not in tensors)
    if missing:
        raise KeyError(
            f"{len(missing)} T5 encoder tensors missing: {', '.join(missing[:6])}{' ...' * (len(missing) > 6)}"
        )
    params: dict = {}
    for path, (name, transpose) in names.items():
        value = np.asarray(tensors[name], np.float32)
        value = value.T if transpose else value
        want = tuple(_at(shapes, path).shape)
        if value.shape != want:
            raise ValueError(
                f"tensor {name} has shape {value.shape}; config.json gives {want} (transposed: {transpose})."
            )
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value)
    return params


def _at(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree
