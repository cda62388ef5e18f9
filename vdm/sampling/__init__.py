"""Sampling: one sampler table over the update steps: the public `vdm.sampling` (its home is `vdm.sampling.samplers`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.sampling.samplers`.
"""

from vdm.sampling.guidance import cfg_denoise_fn, classifier_guided_denoise_fn  # noqa: F401
from vdm.sampling.samplers import (  # noqa: F401
    COMMON_CHECKS,
    COMMON_DEFAULTS,
    METHODS,
    PROGRAM_ONLY_OPTIONS,
    SAMPLERS,
    DenoiseFn,
    Sampler,
    ancestral_step,
    ddim_encode,
    ddim_step,
    num_evaluations,
    option_names,
    options_from_config,
    read_prediction,
    resolve_options,
    sample,
)
