"""The five readings of one denoiser: eps, x0, score, v and flow.

With z = alpha x + sigma eps (alpha^2 + sigma^2 = 1):
    x0    = (z - sigma eps) / alpha
    score = grad log q(z) = -eps / sigma          (Tweedie: E[x|z] = (z + sigma^2 score) / alpha)
    v     = alpha eps - sigma x                   (Salimans & Ho 2022)
    flow  = eps - x                               (the velocity of the OT path (1 - t) x + t eps; Lipman et al. 2023)
and back from v: x = alpha z - sigma v, eps = sigma z + alpha v; from flow (z + alpha flow = (alpha + sigma) eps):
    eps = (z + alpha flow) / (alpha + sigma),  x = (z - sigma flow) / (alpha + sigma).
The network's input may be scaled (INPUT_SCALINGS): 'ot' feeds it z / (alpha + sigma) = z_OT, so a velocity model
of the OT path, u(z_OT, t), is the same function here.
"""

from __future__ import annotations

import jax

from vdm.core.schedules import alpha_sigma

Array = jax.Array
KINDS = ("eps", "x0", "score", "v", "flow")
INPUT_SCALINGS = ("none", "ot")  # what the network sees: z itself, or z / (alpha + sigma), the OT path's z


def _check(kind: str, role: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown {role} parameterization {kind!r}; choose one of {KINDS}.")


def scale_input(z: Array, gamma: Array, scaling: str) -> Array:
    """The network's input: z ('none') or z / (alpha + sigma) ('ot': z_OT = (1 - t) x + t eps at t = sigmoid(gamma/2))."""
    if scaling == "none":
        return z
    if scaling == "ot":
        alpha, sigma = alpha_sigma(gamma)
        return z / (alpha + sigma)
    raise ValueError(f"Unknown input scaling {scaling!r}; choose one of {INPUT_SCALINGS}.")


def to_x0_eps(pred: Array, z: Array, gamma: Array, kind: str) -> tuple[Array, Array]:
    """(x0_hat, eps_hat) implied by a prediction of `kind`, from z = alpha x + sigma eps."""
    _check(kind, "source")
    alpha, sigma = alpha_sigma(gamma)
    if kind == "eps":
        return (z - sigma * pred) / alpha, pred
    if kind == "x0":
        return pred, (z - alpha * pred) / sigma
    if kind == "score":
        eps = -sigma * pred
        return (z - sigma * eps) / alpha, eps
    if kind == "flow":  # DESIGN.md's contract: z + alpha flow = (alpha + sigma) eps, z - sigma flow = (alpha + sigma) x
        return (z - sigma * pred) / (alpha + sigma), (z + alpha * pred) / (alpha + sigma)
    return alpha * z - sigma * pred, sigma * z + alpha * pred  # v


def convert(pred: Array, z: Array, gamma: Array, *, source: str, target: str) -> Array:
    """Re-express a denoiser prediction of kind `source` as kind `target` ('eps', 'x0', 'score', 'v', 'flow') at (z, gamma)."""
    _check(source, "source")
    _check(target, "target")
    if source == target:
        return pred
    # Direct routes that avoid dividing by alpha or sigma where the source allows it.
    alpha, sigma = alpha_sigma(gamma)
    if source == "eps" and target == "score":
        return -pred / sigma
    if source == "score" and target == "eps":
        return -sigma * pred
    x0, eps = to_x0_eps(pred, z, gamma, source)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "score":
        return -eps / sigma
    if target == "flow":
        return eps - x0
    return alpha * eps - sigma * x0  # v


# The reverse variance's head (config.model.variance_head): the network's second C channels r read as
# the interpolation weight v of Sigma = exp(v log beta + (1 - v) log beta_tilde) (Nichol & Dhariwal 2021, eq. 15).
#   'interp'  v = (r + 1) / 2, unconstrained (the paper's choice: "we did not apply any constraints on v")
#   'sigmoid' v = sigmoid(r), kept in [0, 1], i.e. Sigma between beta_tilde and beta
# Both give v = 1/2 from the zero-initialised output layer.
VARIANCE_HEADS = ("none", "interp", "sigmoid")


def variance_weight(raw: Array, head: str) -> Array:
    """v of the head's raw output r: 'interp' (r + 1)/2 (Nichol & Dhariwal 2021, sec. 3.1), 'sigmoid' sigmoid(r)."""
    if head == "interp":
        return 0.5 * (raw + 1.0)
    if head == "sigmoid":
        return jax.nn.sigmoid(raw)
    raise ValueError(f"Unknown variance head {head!r}; choose one of {VARIANCE_HEADS[1:]} ('none': no head).")


def split_variance(out: Array, head: str) -> tuple[Array, Array | None]:
    """(prediction, v): a head's output [..., 2C] split into its first C channels and v of the rest; ('none': (out, None))."""
    if head == "none":
        return out, None
    channels = out.shape[-1] // 2
    return out[..., :channels], variance_weight(out[..., channels:], head)
