"""Which Task a config trains: config.task names it (validation.TASKS), and this table holds each one's entry points.

`train(config, workdir)` trains any config (`python -m vdm.main --config=... --workdir=...`), and
`for_inference(config, mode)` builds the Task that `--mode=eval` and `--mode=sample` ask for their numbers and
samples (`task.evaluate_split`, `task.sampler`, `task.sample_labels`, `task.data_info`). The modes hold no branch
on the kind of model; a Task without them says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections

from vdm.config.validation import ConfigError, task_of
from vdm.tasks import attribute_task, autoencoder_task, classifier_task, diffusion_task, latent_task


class Entry(NamedTuple):
    """One Task's entry points: train(config, workdir) -> last eval; for_inference(config, mode) -> Task or None;
    summary(result, workdir) -> the line `python -m vdm.main` prints after training."""

    train: Callable[[ml_collections.ConfigDict, str], dict]
    for_inference: Callable[[ml_collections.ConfigDict, str], Any] | None
    summary: Callable[[dict, str], str]


def _bpd_summary(result: dict, w: str) -> str:
    """The diffusion models' closing lines: the test bits/dim and where the run's files are."""
    return (
        f"test bits/dim {result.get('eval/bpd', float('nan')):.4f} +- {result.get('eval/bpd_se', float('nan')):.4f}"
        f" (-ELBO, EMA params)\nsamples: {w}/samples/  metrics: {w}/metrics.jsonl (and {w}/tb/)"
        f"  checkpoints: {w}/checkpoints/  bits/dim figure: {w}/bpd.png"
    )


def _autoencoder_summary(result: dict, w: str) -> str:
    """The autoencoder's closing line: its test -ELBO and the two terms."""
    return (
        f"test -ELBO {result['eval/bpd']:.4f} +- {result['eval/bpd_se']:.4f} bits/dim (reconstruction "
        f"{result['eval/bpd_recon']:.4f} + KL {result['eval/bpd_kl']:.4f}; EMA params)  images: {w}/samples/"
    )


def _classifier_summary(result: dict, w: str) -> str:
    """The noisy classifier's closing line: its test accuracies at each t."""
    return "test accuracy " + ", ".join(f"{k.rsplit('_', 1)[-1]}: {v:.4f}" for k, v in sorted(result.items()))


def _attribute_summary(result: dict, w: str) -> str:
    """The attribute classifier's closing line: its prompt accuracy (overall) on real images, held-out and seen."""
    figures = [
        (
            f"{split} ({group})",
            result.get(f"attributes/{split}/{group}/overall"),
            result.get(f"attributes/{split}/{group}/overall_se"),
        )
        for split, group in (("test", "held_out"), ("train", "seen"))
    ]
    return (
        "prompt accuracy of real images (overall, the ceiling): "
        + ", ".join(f"{name} {v:.4f} +- {se:.4f}" for name, v, se in figures if v is not None)
        + f"  report: {w}/{attribute_task.REPORT}"
    )


TASKS: dict[str, Entry] = {
    "diffusion": Entry(diffusion_task.train_and_evaluate, diffusion_task.build, _bpd_summary),
    "latent_diffusion": Entry(
        latent_task.train_and_evaluate, lambda c, mode: latent_task.build(c, mode=mode), _bpd_summary
    ),
    "autoencoder": Entry(autoencoder_task.train_autoencoder, None, _autoencoder_summary),
    "classifier": Entry(classifier_task.train_classifier, None, _classifier_summary),
    "attribute_classifier": Entry(attribute_task.train_attribute_classifier, None, _attribute_summary),
}


def entry(config: ml_collections.ConfigDict) -> Entry:
    """The table entry of config.task (validation.task_of: checked, or inferred for an older record)."""
    return TASKS[task_of(config)]


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train the config's Task in `workdir` (resuming from its checkpoints); return its last eval."""
    return entry(config).train(config, workdir)


def for_inference(config: ml_collections.ConfigDict, mode: str) -> Any:
    """The config's Task for --mode=eval/sample (validated for `mode`); ConfigError for a Task that has neither."""
    build = entry(config).for_inference
    if build is None:
        raise ConfigError(
            f"config.task={task_of(config)!r} has no --mode={mode}: its training run evaluates it "
            "(metrics.jsonl); --mode=eval and --mode=sample are for 'diffusion' and 'latent_diffusion'."
        )
    return build(config, mode)
