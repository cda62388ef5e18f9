"""Flax denoisers, the learned schedule and the noisy classifier.

Every denoiser is called as
    model.apply(variables, z, gamma, y=None, train=False, rngs={'dropout': key})
with z [B, H, W, C] (UNets) or [B, D] (mlp), gamma [B] and y [B] int32 or None,
and returns a raw prediction shaped like z; the caller reads it as
config.model.parameterization.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import flax.linen as nn

from vdm.models import layers
from vdm.models.classifier import NoisyClassifier
from vdm.models.convert import from_reference, maybe_convert_params, stack_blocks, unstack_blocks
from vdm.models.mlp import MLPDenoiser
from vdm.models.schedule import LearnedLinearSchedule, LearnedSchedule, variance_minimizing_grads
from vdm.models.unet_adm import ADMUNet
from vdm.models.unet_vdm import VDMUNet

__all__ = ['get_model', 'MODEL_NAMES', 'VDMUNet', 'ADMUNet', 'MLPDenoiser',
           'LearnedSchedule', 'LearnedLinearSchedule', 'variance_minimizing_grads', 'NoisyClassifier',
           'stack_blocks', 'unstack_blocks', 'maybe_convert_params', 'from_reference']

_COMMON = ('width', 'dropout', 'fourier_features', 'fourier_min', 'fourier_max',
           'num_classes', 'gamma_min', 'gamma_max')


def _get(cfg: Any, key: str) -> Any:
  try:
    return cfg[key]
  except KeyError:
    raise ValueError(
        f"model config {cfg.get('name', '?')!r} is missing key {key!r}") from None


def _kwargs(cfg: Any, keys: tuple[str, ...]) -> Dict[str, Any]:
  """Read `keys` from the config, with tuples made of ints and floats of numbers."""
  out = {k: _get(cfg, k) for k in keys}
  for k in ('channel_mult', 'attention_resolutions'):
    if k in out:
      out[k] = tuple(int(v) for v in out[k])
  for k in ('dropout', 'gamma_min', 'gamma_max'):
    out[k] = float(out[k])
  out['fourier_features'] = bool(out['fourier_features'])
  for k in _VDM_BOOLS:
    if k in out:
      if not isinstance(out[k], bool):
        raise ValueError(f'model config key {k!r} must be a bool, got {out[k]!r}')
  if 'norm_groups' in out:
    out['norm_groups'] = int(out['norm_groups'])
    if out['norm_groups'] < 0:
      raise ValueError(f"model config key 'norm_groups' must be >= 0 (0: adaptive), got {out['norm_groups']}")
  if 'embedding_freqs' in out and out['embedding_freqs'] not in layers.EMBEDDING_FREQS:
    raise ValueError(f"unknown model.embedding_freqs {out['embedding_freqs']!r}; "
                     f"valid: {', '.join(layers.EMBEDDING_FREQS)}")
  return out


# The keys that make vdm_unet exactly google-research/vdm's ScoreUNet (see configs/cifar10.py).
_VDM_BOOLS = ('residual_output', 'cond_proj_bias', 'cond_proj_zero_init', 'scan_blocks', 'remat')
_VDM_KEYS = ('num_layers', 'num_heads', 'embedding_freqs', 'norm_groups') + _VDM_BOOLS


_BUILDERS: Dict[str, Callable[[Any], nn.Module]] = {
    'vdm_unet': lambda c: VDMUNet(**_kwargs(c, _COMMON + _VDM_KEYS)),
    'adm_unet': lambda c: ADMUNet(**_kwargs(c, _COMMON + (
        'channel_mult', 'num_res_blocks', 'attention_resolutions', 'num_heads'))),
    'mlp': lambda c: MLPDenoiser(**_kwargs(c, _COMMON + ('num_layers',))),
}
MODEL_NAMES = tuple(_BUILDERS)


def get_model(model_config: Any, dtype: Any = None) -> nn.Module:
  """Build the denoiser named model_config.name ('vdm_unet', 'adm_unet' or 'mlp'); dtype: its compute dtype.

  dtype (e.g. jnp.bfloat16) sets the activations' and matmuls' dtype; parameters stay
  float32 and the output is float32. None: float32 throughout.
  """
  name = _get(model_config, 'name')
  if name not in _BUILDERS:
    raise ValueError(
        f'unknown model name {name!r}; valid choices: {", ".join(MODEL_NAMES)}')
  model = _BUILDERS[name](model_config)
  return model if dtype is None else model.clone(dtype=dtype)
