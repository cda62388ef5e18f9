"""Where our train step loses time against google-research/vdm's (benchmark.py --sections=diagnose).

Variants of OUR step (vdm.trainer.train_step's pieces, rebuilt here with one piece removed or
replaced at a time), the reference's step, and the two networks alone (forward + backward), all
timed alternating in one run (bench_reference.time_alternating); each as the median over repeats
of its seconds / our full step's seconds in the same repeat (a shared machine's load drifts), plus the compiled HLO's size and XLA's cost analysis for the two full steps.
The architecture and sizes are bench_reference's (ours_config / reference_config). Nothing
here is used by vdm/; the rebuilt step is a measurement tool, not a second trainer.
"""

from __future__ import annotations

import contextlib
import re
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments import bench_reference as br
from vdm import objectives, parallel
from vdm import trainer as tr
from vdm.models import layers
from vdm.schedules import dgamma_dt

FULL = {"ema": True, "guard": True, "autodiff": False, "example_noise": True}
# (name, what it changes): options of variant_step, or a config/donation change of the real step.
VARIANTS = (
    ("rebuilt, nothing removed", {}),
    ("without EMA", {"ema": False}),
    ("without the NaN guard (jnp.where keep, grad_norm)", {"guard": False}),
    ("jax.value_and_grad of the mean loss (no hand cotangents)", {"autodiff": True}),
    ("one batch draw of t, eps, eps_0 (no per-example fold_in)", {"example_noise": False}),
    ("reference-like: value_and_grad + batch draw + no guard (EMA kept)",
     {"autodiff": True, "example_noise": False, "guard": False}),
)


def batch_noise(key: jax.Array, x: jax.Array, *, antithetic: bool) -> dict:
    """t [B], eps, eps_0 like x from one draw each of the whole (local) batch, as the reference draws them."""
    k_t, k_eps, k_eps0, k_u = jax.random.split(key, 4)
    b = x.shape[0]
    t = (jnp.mod(jax.random.uniform(k_t, ()) + jnp.arange(b) / b, 1.0) if antithetic
         else jax.random.uniform(k_t, (b,)))
    return {"t": t, "eps": jax.random.normal(k_eps, x.shape, x.dtype),
            "eps_0": jax.random.normal(k_eps0, x.shape, x.dtype), "u": jax.random.uniform(k_u, (b,))}


def hand_loss(trainer, params, batch, noise, dropout_key) -> tuple:
    """(loss, grads, terms) through objectives.loss_and_grads, as vdm.trainer.loss_and_grads calls it."""
    c = trainer.config
    y = tr.drop_labels(batch["label"], noise["u"], c.model.num_classes, c.model.label_dropout)
    net = lambda p, z, gamma: trainer.apply_model(p, z, gamma, y, train=True, dropout_key=dropout_key)
    return objectives.loss_and_grads(net, params["model"], trainer.schedule_apply, params.get("schedule"),
                                     batch["x"], noise["t"], noise["eps"], noise["eps_0"],
                                     parameterization=c.model.parameterization, weighting=c.loss.weighting,
                                     decoder=trainer.decoder, encoding=trainer.info.encoding,
                                     schedule_grad=trainer.schedule_grad)


def autodiff_loss(trainer, params, batch, noise, dropout_key) -> tuple:
    """(loss, grads, terms): jax.value_and_grad of the batch-mean loss over model and schedule params."""
    c, x = trainer.config, batch["x"]
    y = tr.drop_labels(batch["label"], noise["u"], c.model.num_classes, c.model.label_dropout)

    def loss(p):
        schedule = lambda t: trainer.schedule_apply(p.get("schedule"), t)
        gamma_t, dgamma = dgamma_dt(schedule, noise["t"])
        rec, prior = objectives.endpoint_terms(x, noise["eps_0"], schedule(jnp.zeros(())), schedule(jnp.ones(())),
                                               trainer.decoder, trainer.info.encoding)
        net = lambda z, _: trainer.apply_model(p["model"], z, gamma_t, y, train=True, dropout_key=dropout_key)
        diff = objectives.weighted_diffusion_term(net, x, noise["eps"], noise["t"], gamma_t, dgamma,
                                                  parameterization=c.model.parameterization,
                                                  weighting=c.loss.weighting)
        terms = {"loss": jnp.mean(rec + prior + diff), "reconstruction": jnp.mean(rec),
                 "prior": jnp.mean(prior), "diffusion": jnp.mean(diff)}
        return terms["loss"], terms

    (value, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, grads, terms


def update(tx, state, grads, terms, *, ema: bool, guard: bool, ema_decay: float, lr) -> tuple:
    """vdm.trainer.optimizer_step with the EMA and/or the non-finite guard (and its grad_norm) optional."""
    if ema and guard:
        return tr.optimizer_step(tx, state, grads, terms, ema_decay=ema_decay, lr=lr)
    grads, terms = jax.lax.pmean(grads, parallel.AXIS), jax.lax.pmean(terms, parallel.AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay) if ema else state.ema_params
    metrics = {**terms, "lr": lr}
    if guard:
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        metrics.update(grad_norm=grad_norm, nonfinite=1 - finite.astype(jnp.int32))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params), metrics


def variant_step(trainer, options: dict):
    """Per-device train step like vdm.trainer.train_step, with FULL's pieces switched by `options`."""
    o, c = {**FULL, **options}, trainer.config

    def step(state, batch):
        params = parallel.to_varying(state.params)
        k_example, k_device = tr.step_keys(state)
        draw = tr.example_noise if o["example_noise"] else batch_noise
        noise = draw(k_example, batch["x"], antithetic=c.loss.antithetic)
        _, grads, terms = (autodiff_loss if o["autodiff"] else hand_loss)(trainer, params, batch, noise, k_device)
        return update(trainer.tx, state, grads, terms, ema=o["ema"], guard=o["guard"],
                      ema_decay=c.optimizer.ema_decay, lr=tr.lr_schedule(c)(state.step))
    return step


def variant_cases(size: dict) -> dict:
    """{name: (step, state, batch)}: our full step (unrolled), the rebuilt variants, no dropout, no donation."""
    config = br.ours_config(size, scan=False)
    full_step, state, batch = br.ours_step(config)
    trainer, mesh = br.build(config)
    fresh = lambda: jax.tree.map(jnp.copy, state)          # own buffers: each case donates its own state
    cases = {"ours full step (unrolled)": (full_step, state, batch)}
    for name, options in VARIANTS:
        cases[name] = (parallel.data_parallel(variant_step(trainer, options), mesh), fresh(), batch)
    cases["without donating the state (donate=False)"] = (
        parallel.data_parallel(lambda s, b: tr.train_step(trainer, s, b), mesh, donate=False), fresh(), batch)
    no_drop = br.ours_config(size, scan=False)
    no_drop.model.dropout = 0.0
    cases["without dropout (model.dropout = 0: no dropout rngs/masks)"] = br.ours_step(no_drop)
    return cases


class DenseSkipBlock(layers.ResnetBlock):
    """Our ResnetBlock with the channel-changing skip as a Dense (the reference's nin_shortcut), not a 1x1 conv."""

    @nn.compact
    def __call__(self, x, cond, train: bool):
        h = nn.swish(layers.group_norm(x.shape[-1], 'norm0', self.dtype, self.norm_groups)(x))
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, name='conv0')(h)
        proj_kw = {'kernel_init': nn.initializers.zeros} if self.cond_proj_zero_init else {}
        h = h + nn.Dense(self.out_ch, use_bias=self.cond_proj_bias, dtype=self.dtype,
                         name='cond_proj', **proj_kw)(nn.swish(cond))[:, None, None, :]
        h = nn.swish(layers.group_norm(self.out_ch, 'norm1', self.dtype, self.norm_groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, name='conv1')(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch, dtype=self.dtype, name='skip')(x)
        return x.astype(self.dtype) + h


@contextlib.contextmanager
def dense_skip():
    """While open, vdm_unet's ResNet blocks (unrolled) are DenseSkipBlock: trace and compile inside it."""
    original, layers.ResnetBlock = layers.ResnetBlock, DenseSkipBlock
    try:
        yield
    finally:
        layers.ResnetBlock = original


def compiled_case(step, state, batch) -> tuple:
    """(step compiled ahead of time, state, batch): keeps what was patched while tracing."""
    return step.lower(state, batch).compile(), state, batch


def dense_skip_cases(size: dict) -> dict:
    """Our full step and our network alone with the 1x1-conv skips as Dense layers (compiled under dense_skip)."""
    with dense_skip():
        full = compiled_case(*br.ours_step(br.ours_config(size, scan=False)))
        net = compiled_case(*ours_network_case(size))
    return {"ours full step, 1x1-conv skips as Dense (reference's nin_shortcut)": full,
            "network alone, ours, 1x1-conv skips as Dense (fwd+bwd)": net}


def network_inputs(size: dict) -> dict:
    """z, eps [B, 32, 32, 3] and gamma [B] for the networks alone."""
    z, eps = jax.random.normal(jax.random.PRNGKey(3), (2, size["batch"], 32, 32, 3))
    return {"z": z, "gamma": jnp.linspace(-13.3, 5.0, size["batch"]), "eps": eps}


def as_step(loss_and_grad):
    """A network's f(params, inputs) as a timing case's step(state, batch) -> (state, out)."""
    return jax.jit(lambda params, inputs: (params, loss_and_grad(params, inputs)))


def ours_network_case(size: dict) -> tuple:
    """(step, params, inputs): forward + backward of mean ||net(z, gamma) - eps||^2 through our vdm_unet (unrolled)."""
    key = jax.random.PRNGKey(3)
    trainer, _ = br.build(br.ours_config(size, scan=False))

    def loss_and_grad(p, inputs):
        pred = lambda q: trainer.apply_model(q, inputs["z"], inputs["gamma"], None, train=True, dropout_key=key)
        return jax.value_and_grad(lambda q: jnp.mean(jnp.square(pred(q) - inputs["eps"])))(p)
    return as_step(loss_and_grad), tr.init_params(trainer, key)["model"], network_inputs(size)


def network_cases(ref, size: dict) -> dict:
    """{name: (step, params, inputs)}: forward + backward of the mean squared eps error, ours and the reference's ScoreUNet."""
    key, b = jax.random.PRNGKey(3), size["batch"]
    exp = br.reference_experiment(ref, size)
    unet = ref.model_vdm.ScoreUNet(exp.model.config)

    def reference(p, inputs):
        pred = lambda q: unet.apply({"params": q}, inputs["z"], inputs["gamma"], jnp.zeros((b,)), False,
                                    rngs={"dropout": key})
        return jax.value_and_grad(lambda q: jnp.mean(jnp.square(pred(q) - inputs["eps"])))(p)

    return {"network alone, ours (fwd+bwd)": ours_network_case(size),
            "network alone, reference ScoreUNet (fwd+bwd)": (as_step(reference), exp.state.params["score_model"],
                                                             network_inputs(size))}


def attention_cases(ref, size: dict) -> dict:
    """{name: (step, params, x)}: fwd + bwd of the middle self-attention block alone at [B, 32, 32, width], ours and the reference's."""
    x = jax.random.normal(jax.random.PRNGKey(0), (size["batch"], 32, 32, size["width"]))

    def case(module):
        loss = lambda q, x: jnp.mean(jnp.square(module.apply({"params": q}, x)))
        return as_step(jax.value_and_grad(loss)), module.init(jax.random.PRNGKey(1), x)["params"], x
    return {"attention block alone, ours (flax MultiHeadDotProductAttention)": case(layers.AttnBlock(1, jnp.float32, 32)),
            "attention block alone, reference AttnBlock (its dot_product_attention)":
                case(ref.model_vdm.AttnBlock(num_heads=1))}


INSTRUCTION, FUSION, CONVOLUTION = r"(?m)^\s+\S+ = ", r" fusion\(", r" convolution\("


def hlo_stats(step, state, batch) -> str:
    """Compiled HLO size (instructions, fusions, convolutions) and XLA's flops / bytes accessed of one step."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)   # the state may be donated
    compiled = step.lower(jax.tree.map(spec, state), jax.tree.map(spec, batch)).compile()
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    count = lambda pattern: len(re.findall(pattern, text))
    return (f"{count(INSTRUCTION)} HLO instructions, {count(FUSION)} fusions, "
            f"{count(CONVOLUTION)} convolutions; {cost.get('flops', float('nan')) / 1e9:.2f} GFLOP, "
            f"{cost.get('bytes accessed', float('nan')) / 1e9:.2f} GB accessed")


def diagnose_rows(size: dict, reference_dir: str, repeats: int, iters: int) -> list[tuple[str, str]]:
    """Rows: each variant's ms/step and its ratio to our full step, from one alternating run; then HLO stats."""
    ref = br.load_reference(reference_dir)
    cases = variant_cases(size)
    cases["ours full step (scanned)"] = br.ours_step(br.ours_config(size, scan=True))
    cases["reference train step"] = br.reference_step(ref, size)
    cases.update(network_cases(ref, size))
    cases.update(dense_skip_cases(size))
    cases.update(attention_cases(ref, size))
    times = br.time_alternating(cases, repeats=repeats, iters=iters)
    full, rows = times["ours full step (unrolled)"], []
    for name, seconds in times.items():
        med, ratios = statistics.median(seconds), br.paired_ratios(seconds, full)
        rows.append((f"diagnose: {name}", f"{med * 1e3:.0f} ms/step, {size['batch'] / med:.2f} images/s; / ours full "
                                          f"(per-repeat ratios): median {statistics.median(ratios):.3f}, "
                                          f"range {min(ratios):.3f}-{max(ratios):.3f}"))
    for name in ("ours full step (unrolled)", "reference train step"):
        step, state, batch = cases[name]
        rows.append((f"compiled: {name}", hlo_stats(step, state, batch)))
    return rows

