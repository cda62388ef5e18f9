"""The one loss (the weighted ELBO's terms) and the ELBO: the public `vdm.objectives` (its home is `vdm.core.objectives`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.core.objectives`.
"""

from vdm.core.discrete_time import discrete_diffusion_term, hybrid_diffusion_term, network_output  # noqa: F401
from vdm.core.encoding import bits_per_dim  # noqa: F401
from vdm.core.objectives import (  # noqa: F401
    TERM_NAMES,
    DenoiseFn,
    batch_means,
    discretize_t,
    elbo,
    eps_error,
    example_noise,
    neg_elbo_terms,
    neg_elbo_terms_at,
    sample_t,
    schedule_values,
)
from vdm.core.schedule_gradient import variance_minimizing_grads, variance_minimizing_value_and_grad  # noqa: F401
from vdm.core.weightings import (  # noqa: F401
    WEIGHTINGS,
    get_weighting,
    weight_edm,
    weight_elbo,
    weight_eps_cosine,
    weight_flow,
    weight_min_snr,
    weight_sigmoid,
    weight_simple,
    weight_snr,
    weight_v_cosine,
)
