"""Config checks of text conditioning (config.text, the prompts of config.sampling; docs/text.md).

Like vdm.config.validation (whose helpers these use), each check raises ConfigError naming the key, its value
and what is valid, in one line. `vdm.tasks.diffusion_model.setup` runs them after `validation.validate`.
"""

from __future__ import annotations

import os

import ml_collections

from vdm.config.validation import ConfigError, check, check_choice, check_float, check_int, text_encoder
from vdm.data.pipeline import CAPTIONED_DATASETS

TEXT_ENCODERS = ("none", "scratch", "t5")  # config.text.encoder
TEXT_NETWORKS = ("adm_unet", "dit")  # the denoisers that take (context, context_mask, pooled)
T5_FILES = ("config.json", "tokenizer.json")  # what a T5 folder must hold besides its weights (vdm.text.encoder)


def validate_text(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for an invalid config.text, or prompts (config.sampling.prompt/prompts_file) without text."""
    c = config
    s = c.sampling
    encoder = text_encoder(c)
    check_choice("text.encoder", encoder, TEXT_ENCODERS)
    prompted = s.get("prompt") is not None or s.get("prompts_file") is not None
    if encoder == "none":
        check(
            not prompted,
            "config.sampling.prompt / prompts_file need a text-conditioned model (config.text.encoder 'scratch' or "
            "'t5', e.g. configs/shapes.py); this one has config.text.encoder='none'.",
        )
        return
    t = c.text
    check(
        c.data.dataset in CAPTIONED_DATASETS,
        f"config.text.encoder={encoder!r} needs a captioned data set: config.data.dataset={c.data.dataset!r} is not "
        f"one of {', '.join(map(repr, CAPTIONED_DATASETS))}.",
    )
    check(
        c.model.name in TEXT_NETWORKS,
        f"config.text.encoder={encoder!r} needs a network that cross-attends to text: config.model.name="
        f"{c.model.name!r} is not one of {', '.join(map(repr, TEXT_NETWORKS))}.",
    )
    check(
        c.model.num_classes == 0,
        f"config.text.encoder={encoder!r} conditions on captions: config.model.num_classes must be 0 (got "
        f"{c.model.num_classes}); classes and captions together are not supported.",
    )
    check_float("text.caption_dropout", t.caption_dropout, 0.0, 1.0, hi_open=True)
    for key in ("max_length", "width", "depth", "num_heads"):
        check_int(f"text.{key}", t[key], 1)
    check(t.width % t.num_heads == 0, f"config.text.num_heads={t.num_heads} must divide config.text.width={t.width}.")
    check(
        c.eval.t_sampling != "importance",
        "config.eval.t_sampling='importance' does not combine with text conditioning yet (its pilot pass reads the "
        "train split's captions); use 'uniform'.",
    )
    check(
        not (s.get("prompt") is not None and s.get("prompts_file") is not None),
        "set one of config.sampling.prompt and config.sampling.prompts_file, not both.",
    )
    if s.get("prompts_file") is not None:
        check(
            os.path.isfile(s.prompts_file),
            f"config.sampling.prompts_file={s.prompts_file!r} is not a file (one prompt per line).",
        )
    if encoder == "t5":
        check_t5_folder(t.t5_folder)


def check_t5_folder(folder: str) -> None:
    """Raise a one-line ConfigError unless `folder` is a T5 checkpoint folder (config.json, tokenizer.json, weights)."""
    if not folder:
        raise ConfigError(
            "config.text.encoder='t5' needs config.text.t5_folder, a HuggingFace T5 checkpoint folder "
            "(config.json, model.safetensors, tokenizer.json): set --config.text.t5_folder=PATH."
        )
    if not os.path.isdir(folder):
        raise ConfigError(f"config.text.t5_folder={folder!r} is not a folder (a HuggingFace T5 checkpoint folder).")
    names = set(os.listdir(folder))
    missing = [f for f in T5_FILES if f not in names]
    if not any(n.startswith("model") and n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        missing.append("model.safetensors")
    check(not missing, f"config.text.t5_folder={folder!r} lacks {', '.join(missing)} (a HuggingFace T5 folder).")


def conditioning_note(config: ml_collections.ConfigDict) -> str:
    """The summary lines' words on what the bits/dim is conditioned on: '' without text, else -log p(x | caption)."""
    encoder = text_encoder(config)
    if encoder == "none":
        return ""
    return f"; conditional on the caption: -log p(x | caption), text encoder {encoder!r}"
