"""Parameter layouts of VDMUNet, DiT, U-ViT: unrolled <-> scanned, google-research/vdm -> ours, weight-decay masks.

Unrolled (scan_blocks=False): blocks 'down_0'..'down_{L-1}', 'up_0'..'up_L', each a ResnetBlock tree (VDMUNet),
'blocks_0'..'blocks_{L-1}' (DiT), 'in_blocks_0'..'in_blocks_{k-1}' and 'out_blocks_0'.. (U-ViT). Scanned
(scan_blocks=True): 'down': {'block': tree with every leaf stacked [L, ...]} and 'up': {'block': ... [L + 1, ...]},
'blocks': {'block': ...}, 'in_blocks' / 'out_blocks': {'block': ... [k, ...]}; everything else is shared. Both
compute the same function.

The converters walk any container (dicts, lists, tuples, namedtuples such as optax states,
dataclasses such as a TrainState) and rewrite every dict that holds blocks, so they apply to
params, EMA params and optimizer moments alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
STACKED = ("down", "up", "blocks", "in_blocks", "out_blocks")  # the scanned kinds: KIND: {'block': ...} <-> KIND_0, ..
_UNROLLED = re.compile(r"^(down|up|blocks|in_blocks|out_blocks)_(\d+)$")


def _walk(tree: PyTree, fn: Callable[[dict], dict]) -> PyTree:
    """Apply fn to every Mapping (bottom-up after recursing into its values) inside any container."""
    if isinstance(tree, Mapping):
        return fn({k: _walk(v, fn) for k, v in tree.items()})
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(
            tree, **{f.name: _walk(getattr(tree, f.name), fn) for f in dataclasses.fields(tree) if f.init}
        )
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_walk(v, fn) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_walk(v, fn) for v in tree)
    return tree


def _stack_dict(d: dict) -> dict:
    found = {}
    for k in d:
        m = _UNROLLED.match(k)
        if m:
            found.setdefault(m.group(1), []).append(int(m.group(2)))
    if not found:
        return d
    out = {k: v for k, v in d.items() if not _UNROLLED.match(k)}
    for kind, idx in found.items():
        if sorted(idx) != list(range(len(idx))):
            raise ValueError(f"{kind} blocks are not numbered 0..n-1: {sorted(idx)}")
        if kind in out:
            raise ValueError(f"both {kind!r} and {kind}_0.. present; cannot stack")
        trees = [d[f"{kind}_{i}"] for i in range(len(idx))]
        out[kind] = {"block": jax.tree.map(lambda *xs: _stack(xs), *trees)}
    return out


def _stack(xs: tuple) -> Any:
    return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)


def _unstack_dict(d: dict) -> dict:
    kinds = [k for k in STACKED if isinstance(d.get(k), Mapping) and set(d[k]) == {"block"}]
    if not kinds:
        return d
    out = {k: v for k, v in d.items() if k not in kinds}
    for kind in kinds:
        stacked = d[kind]["block"]
        n = {x.shape[0] for x in jax.tree.leaves(stacked)}
        if len(n) != 1:
            raise ValueError(f"{kind} block leaves disagree on the layer axis: {sorted(n)}")
        for i in range(n.pop()):
            out[f"{kind}_{i}"] = jax.tree.map(lambda x: x[i], stacked)
    return out


def stack_blocks(params: PyTree) -> PyTree:
    """Unrolled -> scanned layout: KIND_i trees (KIND in STACKED) become KIND: {'block': [L, ...]}, stacked."""
    return _walk(params, _stack_dict)


def unstack_blocks(params: PyTree) -> PyTree:
    """Scanned -> unrolled layout: KIND: {'block': [L, ...]} (KIND in STACKED) become KIND_0.. KIND_{L-1} trees."""
    return _walk(params, _unstack_dict)


def is_scanned(params: PyTree) -> bool | None:
    """True if `params` holds scanned blocks, False if unrolled ones, None if no VDMUNet, DiT or U-ViT blocks."""
    seen = set()

    def look(d: dict) -> dict:
        if any(_UNROLLED.match(k) for k in d):
            seen.add(False)
        if any(isinstance(d.get(k), Mapping) and set(d[k]) == {"block"} for k in STACKED):
            seen.add(True)
        return d

    _walk(params, look)
    if len(seen) > 1:
        raise ValueError("params hold both scanned and unrolled blocks")
    return seen.pop() if seen else None


def block_layout(keys: Any) -> str | None:
    """'unrolled' (down_0.. / up_0.. / blocks_0.. entries), 'scanned' ('down'/'up'/'blocks' -> 'block') or None, from a checkpoint's flat
    entry names (vdm.infra.checkpoint.CheckpointMismatchError.saved_keys / expected_keys)."""
    keys = list(keys)
    if any(f"['{kind}_0']" in k for k in keys for kind in STACKED):
        return "unrolled"
    if any(f"['{kind}']['block']" in k for k in keys for kind in STACKED):
        return "scanned"
    return None


def maybe_convert_params(params: PyTree, scanned: bool) -> PyTree:
    """Return `params` in the layout of config.model.scan_blocks = `scanned` (converting if needed)."""
    current = is_scanned(params)
    if current is None or current == scanned:
        return params
    return stack_blocks(params) if scanned else unstack_blocks(params)


# --- google-research/vdm -> ours --------------------------------------------------------------


def _dense(p: Mapping) -> dict:
    return {k: jnp.asarray(v) for k, v in p.items()}


def _block(p: Mapping) -> dict:
    """Reference ResnetBlock {GroupNorm_0, conv1, cond_proj, GroupNorm_1, conv2[, nin_shortcut]} -> ours."""
    out = {
        "norm0": _dense(p["GroupNorm_0"]),
        "conv0": _dense(p["conv1"]),
        "cond_proj": _dense(p["cond_proj"]),
        "norm1": _dense(p["GroupNorm_1"]),
        "conv1": _dense(p["conv2"]),
    }
    if "nin_shortcut" in p:  # Dense over channels == 1x1 conv with kernel [1, 1, C_in, C_out]
        out["skip"] = {
            "kernel": jnp.asarray(p["nin_shortcut"]["kernel"])[None, None],
            "bias": jnp.asarray(p["nin_shortcut"]["bias"]),
        }
    return out


def _attn(p: Mapping) -> dict:
    """Reference single-head AttnBlock {GroupNorm_0, q, k, v, proj_out} -> flax MultiHeadDotProductAttention (1 head)."""
    qkv = {
        ours: {
            "kernel": jnp.asarray(p[ref]["kernel"])[:, None, :],  # [C, 1 head, C]
            "bias": jnp.asarray(p[ref]["bias"])[None, :],
        }  # [1 head, C]
        for ours, ref in (("query", "q"), ("key", "k"), ("value", "v"))
    }
    qkv["out"] = {
        "kernel": jnp.asarray(p["proj_out"]["kernel"])[None],  # [1 head, C, C]
        "bias": jnp.asarray(p["proj_out"]["bias"]),
    }
    return {"norm": _dense(p["GroupNorm_0"]), "attn": qkv}


def from_reference(ref: Mapping, scanned: bool = False) -> dict:
    """google-research/vdm ScoreUNet params (its params['score_model']) -> VDMUNet params (paper keys of configs/cifar10.py).

    The reference's dense0 reads [temb, conditioning] (kernel [n_embd + 1, 4 n_embd]); its last row
    multiplies the conditioning scalar, which is 0 in the reference's unaugmented CIFAR-10 runs, so
    it is dropped (the converted net equals the reference at conditioning = 0). Its swish after
    dense1 is the swish our ResNet blocks apply before cond_proj (same function). Only
    with_attention=False (the paper's setting: attention in the middle only) is supported.
    """
    ref = ref.get("score_model", ref)
    n_down = sum(1 for k in ref if k.startswith("down.block_"))
    if any(k.startswith(("down.attn_", "up.attn_")) for k in ref):
        raise ValueError("reference params with with_attention=True have no VDMUNet counterpart")
    dense0 = _dense(ref["dense0"])
    dense0["kernel"] = dense0["kernel"][:-1]
    out = {
        "embed": {"dense0": dense0, "dense1": _dense(ref["dense1"])},
        "conv_in": _dense(ref["conv_in"]),
        "mid_0": _block(ref["mid.block_1"]),
        "mid_attn": _attn(ref["mid.attn_1"]),
        "mid_1": _block(ref["mid.block_2"]),
        "norm_out": _dense(ref["GroupNorm_0"]),
        "conv_out": _dense(ref["conv_out"]),
    }
    for i in range(n_down):
        out[f"down_{i}"] = _block(ref[f"down.block_{i}"])
    for i in range(n_down + 1):
        out[f"up_{i}"] = _block(ref[f"up.block_{i}"])
    return stack_blocks(out) if scanned else out


# --- weight decay masks -------------------------------------------------------------------------

DECAY_MASKS = ("matrices", "non_bias", "all")


def decay_mask(params: PyTree, kind: str) -> PyTree:
    """AdamW mask over {'model': ..., ['schedule': ...]}: 'matrices' (model leaves of per-layer ndim >= 2), 'non_bias' or 'all'.

    'non_bias' is google-research/vdm's mask: every leaf whose name is not 'bias' (norm scales and
    the learned schedule's w and b included). 'matrices' counts ndim per layer, i.e. without the
    [L] axis scanned blocks add, so it selects the same leaves in both layouts.
    """
    if kind not in DECAY_MASKS:
        raise ValueError(f"unknown decay mask {kind!r}; valid: {', '.join(DECAY_MASKS)}")

    def leaf(path: tuple, p: Any) -> bool:
        names = [getattr(k, "key", None) for k in path]
        if kind == "all":
            return True
        if kind == "non_bias":
            return names[-1] != "bias"
        stacked = any(a in STACKED and b == "block" for a, b in zip(names, names[1:]))
        return names[0] == "model" and p.ndim - int(stacked) >= 2

    return jax.tree_util.tree_map_with_path(leaf, params)
