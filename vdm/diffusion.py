"""The variance-preserving Gaussian diffusion's closed forms: q(z_t | x), posteriors, KLs, decoders: the public `vdm.diffusion` (its home is `vdm.core.gaussian`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.core.gaussian`.
"""

from vdm.core.gaussian import (  # noqa: F401
    DECODER_ALIASES,
    DECODERS,
    LOG_2PI,
    VARIANCES,
    categorical_log_probs,
    decoder_log_prob,
    discretized_gaussian_log_prob,
    expand_to,
    kl_normal,
    normal_logpdf,
    posterior,
    prior_kl,
    q_sample,
    resolve_decoder,
    step_variance,
    sum_except_batch,
    transition,
)
