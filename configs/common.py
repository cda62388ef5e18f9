"""What the experiment configs share: comma-separated variants, the optimizer and loop keys, the `:small` smoke test.

Not a config (no get_config). Each config loads it by its path next to its own file,
`load_sibling(__file__, "common")`, as it loads configs/base.py, not as the module `configs.common`:
configs load from any working directory, without the repository on sys.path.

The optimizer and training keys are configs/base.py's, where each is commented with the default
experiment's value: one optimizer (vdm.infra.optim) and one loop (vdm.tasks.loop) read them for
every task, so a config that is not a diffusion experiment (the autoencoder, the noisy
classifier) starts from those blocks and names only the values it changes.
"""

from collections.abc import Iterable, Mapping

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/base.py, by its path next to this file

# `:small`, a smoke test of any task's loop: a short warmup, 20 steps of batch 16 that reach
# every interval (eval, checkpoints, logs). Each config adds the shrinking of its own network.
SMALL = {
    "optimizer.warmup_steps": 5,
    "training.num_steps": 20,
    "training.batch_size": 16,
    "training.eval_every": 20,
    "training.checkpoint_every": 10,
    "training.log_every": 5,
}


def parse_variants(arg: str, known: Iterable[str], name: str) -> set[str]:
    """The variants of a config argument, comma-separated ('': none); one not in `known` raises a ValueError
    naming it, the config `name` and the known ones."""
    known = tuple(known)
    variants = set(filter(None, arg.split(",")))
    if not variants <= set(known):
        raise ValueError(
            f"unknown {name} variant(s) {sorted(variants - set(known))} in {arg!r}; "
            f"choose from {list(known)} (comma-separated), or ''."
        )
    return variants


def optimizer(**overrides) -> ml_collections.ConfigDict:
    """configs/base.py's config.optimizer (AdamW, warmup then decay, clipping, EMA) with `overrides` of its keys."""
    return _block("optimizer", overrides)


def training(**overrides) -> ml_collections.ConfigDict:
    """configs/base.py's config.training (steps, batch, intervals) with `overrides` of its keys, less `dtype`
    (the diffusion network's compute dtype, which no other task reads)."""
    return _block("training", overrides, drop=("dtype",))


def small(config: ml_collections.ConfigDict, overrides: Mapping[str, object] = ()) -> ml_collections.ConfigDict:
    """`config` as the `:small` smoke test: SMALL, then `overrides` {'section.key': value} (the config's own
    network, eval batch, sampler); every key must exist. Changes `config` in place and returns it."""
    for dotted, value in {**SMALL, **dict(overrides)}.items():
        *path, key = dotted.split(".")
        section = config
        for part in path:
            section = section[part]
        if key not in section:
            raise KeyError(f"config.{dotted} does not exist: `:small` only changes existing keys.")
        section[key] = value
    return config


def _block(name: str, overrides: Mapping[str, object], drop: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Section `name` of configs/base.py's image config, without the keys `drop`, with `overrides` of its keys."""
    block = load_sibling(__file__, "base").get_config("image")[name]  # a fresh config's section: ours to change
    for key in drop:
        del block[key]  # (deleting keeps the order of the rest: base.py's)
    unknown = sorted(set(overrides) - set(block.keys()))
    if unknown:
        raise KeyError(f"config.{name} has no key(s) {unknown}; its keys: {list(block.keys())}.")
    for key, value in overrides.items():
        block[key] = value
    return block
