"""Flax modules: the denoisers and their registry (get_model), learned schedules, the noisy classifier, the
autoencoder, Inception-v3; parameter-layout conversion (convert). Each module is imported from its own file.

Every denoiser is called as
    model.apply(variables, z, gamma, y=None, train=False, rngs={'dropout': key})
with z [B, H, W, C] (UNets, DiT, U-ViT) or [B, D] (mlp), gamma [B] and y [B] int32 or None,
and returns a raw prediction shaped like z; the caller reads it as
config.model.parameterization. With config.model.variance_head (not 'none') the output has
twice the channels: the prediction, then the reverse variance's raw interpolation weight
(vdm.core.parameterization.split_variance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vdm.models.dit import DiT
from vdm.models.mlp import MLPDenoiser
from vdm.models.schedule import LearnedLinearSchedule, LearnedSchedule
from vdm.models.unet_adm import ADMUNet
from vdm.models.unet_vdm import VDMUNet
from vdm.models.uvit import UViT

_COMMON = (
    "width",
    "dropout",
    "fourier_features",
    "fourier_min",
    "fourier_max",
    "num_classes",
    "gamma_min",
    "gamma_max",
)


def _get(cfg: Any, key: str) -> Any:
    try:
        return cfg[key]
    except KeyError:
        raise ValueError(f"model config {cfg.get('name', '?')!r} is missing key {key!r}") from None


def _kwargs(cfg: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """Read `keys` from the config, with tuples made of ints and floats of numbers."""
    out = {k: _get(cfg, k) for k in keys}
    for k in ("channel_mult", "attention_resolutions"):
        if k in out:
            out[k] = tuple(int(v) for v in out[k])
    for k in ("dropout", "gamma_min", "gamma_max") + (("mlp_ratio",) if "mlp_ratio" in out else ()):
        out[k] = float(out[k])
    out["fourier_features"] = bool(out["fourier_features"])
    out["variance_head"] = cfg.get("variance_head", "none") != "none"  # C more outputs (vdm.core.parameterization)
    if "norm_groups" in out:
        out["norm_groups"] = int(out["norm_groups"])
    return out


# The keys that make vdm_unet exactly google-research/vdm's ScoreUNet (see configs/cifar10.py);
# vdm.config.validation checks them.
VDM_BOOLS = ("residual_output", "cond_proj_bias", "cond_proj_zero_init", "scan_blocks", "remat")
_VDM_KEYS = ("num_layers", "num_heads", "embedding_freqs", "norm_groups") + VDM_BOOLS
# DiT's keys (configs/base.py): width is its hidden size, num_layers its depth; scan_blocks and remat as vdm_unet's.
DIT_KEYS = ("num_layers", "num_heads", "patch_size", "mlp_ratio", "time_input", "scan_blocks", "remat")
# uvit (U-ViT, Bao et al. 2023) reads the same keys: num_layers its total depth (odd: num_layers // 2 in blocks, a mid
# block, num_layers // 2 out blocks), checked by vdm.models.uvit.validate_uvit.


_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "vdm_unet": lambda c: VDMUNet(**_kwargs(c, _COMMON + _VDM_KEYS)),
    "adm_unet": lambda c: ADMUNet(
        **_kwargs(c, _COMMON + ("channel_mult", "num_res_blocks", "attention_resolutions", "num_heads"))
    ),
    "dit": lambda c: DiT(**_kwargs(c, _COMMON + DIT_KEYS)),
    "uvit": lambda c: UViT(**_kwargs(c, _COMMON + DIT_KEYS)),
    "mlp": lambda c: MLPDenoiser(**_kwargs(c, _COMMON + ("num_layers",))),
}
MODEL_NAMES = tuple(_BUILDERS)
COMPUTE_DTYPES: dict[str, Any] = {
    "float32": None,
    "bfloat16": jnp.bfloat16,
}  # config.training.dtype -> get_model's dtype

# Learned schedules (config.model.schedule) and how they learn (vdm.tasks.diffusion_model.DiffusionModel.value_and_grad):
# 'variance': VDM's variance-minimising gradient for the shape, the mean-loss gradient for the endpoints;
# 'mean': the mean-loss gradient (the endpoints of a linear log-SNR, as google-research/vdm learns them).
LEARNED_SCHEDULES: dict[str, str] = {"learned": "variance", "learned_linear": "mean"}


def get_schedule_module(model_config: Any) -> nn.Module | None:
    """The Flax module of a learned schedule (config.model.schedule in LEARNED_SCHEDULES), else None."""
    m = model_config
    if m.schedule == "learned":
        return LearnedSchedule(m.gamma_min, m.gamma_max, m.learn_endpoints)
    if m.schedule == "learned_linear":
        return LearnedLinearSchedule(m.gamma_min, m.gamma_max)
    return None


def get_model(model_config: Any, dtype: Any = None) -> nn.Module:
    """Build the denoiser named model_config.name (one of MODEL_NAMES); dtype: its compute dtype.

    dtype (e.g. jnp.bfloat16) sets the activations' and matmuls' dtype; parameters stay
    float32 and the output is float32. None: float32 throughout.
    """
    name = _get(model_config, "name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown model name {name!r}; valid choices: {', '.join(MODEL_NAMES)}")
    model = _BUILDERS[name](model_config)
    return model if dtype is None else model.clone(dtype=dtype)
