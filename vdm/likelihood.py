"""-log p(x) through the probability-flow ODE: the public `vdm.likelihood` (its home is `vdm.sampling.likelihood`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.sampling.likelihood`.
"""

from vdm.sampling.likelihood import MAX_EXACT_DIMS, SOLVERS, TRACES, DenoiseFn, dequant_offset_nats_per_dim, ode_nll  # noqa: F401
