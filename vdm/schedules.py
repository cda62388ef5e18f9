"""Noise schedules gamma(t) = -log SNR(t): the public `vdm.schedules` (its home is `vdm.core.schedules`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.core.schedules`.
"""

from vdm.core.schedules import (  # noqa: F401
    SCHEDULES,
    Schedule,
    alpha_sigma,
    cosine,
    ddpm_linear,
    ddpm_timestep_gammas,
    ddpm_timestep_of_gamma,
    dgamma_dt,
    edm_sigma_to_gamma,
    from_alphas_cumprod,
    from_betas,
    gamma_of_ddpm_timestep,
    gamma_to_edm_sigma,
    get_schedule,
    inverse,
    linear_logsnr,
    ot,
    ot_scale,
    ot_time,
    shifted,
    snr,
)
