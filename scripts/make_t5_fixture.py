"""Write tests/fixtures/t5_tiny/ (a tiny random T5 encoder checkpoint) and tests/fixtures/t5_tiny_reference.npz.

Not part of the package and not run by the tests (they only read what it writes): it needs torch and
transformers, both outside this repository's requirements, e.g.

    python3 -m venv /tmp/t5venv
    /tmp/t5venv/bin/pip install torch==2.13.0 transformers sentencepiece tokenizers safetensors numpy
    /tmp/t5venv/bin/python scripts/make_t5_fixture.py

It trains a Unigram tokenizer of about 100 pieces on a few sentences (T5's layout: <pad> = 0, </s> = 1,
<unk> = 2, '</s>' appended to every text), builds transformers' T5EncoderModel from a tiny random T5Config
(v1.1 / Flan-T5: gated-GELU feed-forward, RMS norm, relative position buckets; its norms and relative bias
perturbed away from their initial values so that every parameter shows in the output) and save_pretrained's
both into tests/fixtures/t5_tiny/ (config.json, model.safetensors, tokenizer.json, ...). The reference .npz
holds, for a few prompts of different lengths padded to the longest, the tokenizer's input_ids and attention
mask and the model's last_hidden_state (eager attention, eval mode) in float32 and in float64, and
T5Attention._relative_position_bucket of relative positions -600..600 at T5's defaults (32 buckets, max
distance 128) and at the tiny config's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, os.pardir, "tests", "fixtures")
SENTENCES = [
    "a small red circle at the top left",
    "a large blue square in the centre and a small green triangle on the right",
    "a photo of an ankle boot",
    "a black and white photo of a pullover",
    "the quick brown fox jumps over the lazy dog",
    "diffusion models learn to denoise images step by step",
    "a medium yellow diamond at the bottom right",
    "text to image generation with a frozen text encoder",
]
PROMPTS = [
    "a red circle",
    "a large blue square in the centre and a small green triangle on the right of the image",
    "",
    "Zebra photo!",  # Z and ! never appear in training: <unk> pieces
    "the lazy dog jumps over a small red circle at the top left of a black and white photo",
]
CONFIG = dict(
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    relative_attention_num_buckets=8,  # bidirectional: 4 per direction, 2 exact, 2 logarithmic up to 20
    relative_attention_max_distance=20,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.1,  # unused in eval mode
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def train_tokenizer(vocab_size: int = 100):
    """A T5-layout Unigram tokenizer (transformers' T5Tokenizer over a vocabulary trained with `tokenizers`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.9
    )
    raw.train_from_iterator(SENTENCES, trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(raw.to_str())["model"]["vocab"]]
    assert [p for p, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"], vocab[:3]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_model(vocab_size: int):
    """transformers' T5EncoderModel of CONFIG, seeded, with norms and relative bias perturbed."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, **CONFIG)
    config._attn_implementation = "eager"
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
    return model


def reference(model, tokenizer) -> dict[str, np.ndarray]:
    """input_ids, attention_mask and last_hidden_state (float32 and float64) of PROMPTS, padded to the longest."""
    import torch

    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out32 = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        model64 = build_model(model.config.vocab_size).double().eval()
        model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        out64 = model64(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return {
        "prompts": np.array(PROMPTS),
        "input_ids": batch["input_ids"].numpy().astype(np.int32),
        "attention_mask": batch["attention_mask"].numpy().astype(bool),
        "last_hidden_state": out32.numpy().astype(np.float32),
        "last_hidden_state64": out64.numpy().astype(np.float64),
    }


def bucket_tables() -> dict[str, np.ndarray]:
    """transformers' _relative_position_bucket (bidirectional) of -600..600 at T5's defaults and at CONFIG's."""
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-600, 601)
    default = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    tiny = T5Attention._relative_position_bucket(
        rel,
        bidirectional=True,
        num_buckets=CONFIG["relative_attention_num_buckets"],
        max_distance=CONFIG["relative_attention_max_distance"],
    )
    return {"relative_position": rel.numpy(), "buckets_default": default.numpy(), "buckets_tiny": tiny.numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=FIXTURES, help="folder that receives t5_tiny/ and t5_tiny_reference.npz")
    args = parser.parse_args()
    folder = os.path.join(args.out, "t5_tiny")
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer = train_tokenizer()
    model = build_model(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ref = reference(model, tokenizer) | bucket_tables()
    np.savez_compressed(os.path.join(args.out, "t5_tiny_reference.npz"), **ref)
    sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}
    print(f"wrote {folder}: {sizes}; vocab {len(tokenizer)}; input_ids shape {ref['input_ids'].shape}")
    print("input_ids:\n", ref["input_ids"])


if __name__ == "__main__":
    main()
