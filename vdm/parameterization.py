"""The denoiser's readings: eps, x0, score, v, flow, and conversion between them: the public `vdm.parameterization` (its home is `vdm.core.parameterization`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.core.parameterization`.
"""

from vdm.core.parameterization import (  # noqa: F401
    INPUT_SCALINGS,
    KINDS,
    VARIANCE_HEADS,
    convert,
    scale_input,
    split_variance,
    to_x0_eps,
    variance_weight,
)
