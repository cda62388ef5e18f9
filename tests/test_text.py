"""Tests of vdm.text: the Flax T5 encoder against transformers' T5EncoderModel (a fixture written by
scripts/make_t5_fixture.py; no torch here), and the folder loader's errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vdm.text
from vdm.text import t5

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
T5_FOLDER = os.path.join(FIXTURES, "t5_tiny")


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(FIXTURES, "t5_tiny_reference.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def t5_encoder():
    return vdm.text.load_text_encoder(T5_FOLDER)


def _reference_pooled(sequence: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (sequence * m).sum(1) / m.sum(1)


def test_t5_encoder_equals_transformers_on_the_tiny_checkpoint(t5_encoder, reference):
    prompts = [str(p) for p in reference["prompts"]]
    ids, mask = t5_encoder.tokenize(prompts)
    np.testing.assert_array_equal(ids, reference["input_ids"])  # T5's pieces, '</s>' appended, pad 0
    np.testing.assert_array_equal(mask, reference["attention_mask"])
    sequence, out_mask, pooled = (np.asarray(a) for a in t5_encoder.encode(prompts))
    assert sequence.shape == reference["last_hidden_state"].shape and out_mask.dtype == bool
    np.testing.assert_allclose(sequence, reference["last_hidden_state"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(sequence, reference["last_hidden_state64"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out_mask, reference["attention_mask"])
    want = _reference_pooled(reference["last_hidden_state64"], reference["attention_mask"])
    np.testing.assert_allclose(pooled, want, atol=1e-5, rtol=0)
    assert t5_encoder.dim == 32


def test_relative_position_buckets_equal_t5s_code(reference):
    rel = reference["relative_position"]
    np.testing.assert_array_equal(t5.relative_position_bucket(rel, 32, 128), reference["buckets_default"])
    np.testing.assert_array_equal(t5.relative_position_bucket(rel, 8, 20), reference["buckets_tiny"])


def test_a_prompts_sequence_does_not_depend_on_the_batchs_padding(t5_encoder):
    long = "the lazy dog jumps over a small red circle at the top left of a black and white photo"
    alone, mask_alone, pooled_alone = t5_encoder.encode(["a red circle"])
    batch, mask, pooled = t5_encoder.encode(["a red circle", long])
    n = int(mask_alone.sum())
    assert int(mask[0].sum()) == n and mask.shape[1] > n
    np.testing.assert_allclose(batch[0, :n], alone[0, :n], atol=1e-5)
    np.testing.assert_allclose(pooled[0], pooled_alone[0], atol=1e-5)


def test_max_length_truncates_and_keeps_the_eos():
    short = vdm.text.load_text_encoder(T5_FOLDER, max_length=6)
    ids, mask = short.tokenize(["the lazy dog jumps over a small red circle", "a"])
    assert ids.shape[1] == 6 and ids[0, -1] == 1 and mask[0].all()  # '</s>' = 1 ends the truncated text
    assert short.fingerprint != vdm.text.load_text_encoder(T5_FOLDER).fingerprint


def _copy(tmp_path, name="t5"):
    folder = tmp_path / name
    shutil.copytree(T5_FOLDER, folder)
    return folder


def test_a_missing_or_corrupt_folder_is_one_clear_error(tmp_path):
    with pytest.raises(vdm.text.EncoderFolderError, match="does not exist"):
        vdm.text.load_text_encoder(tmp_path / "nowhere")
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "tokenizer.json").unlink()
    with pytest.raises(vdm.text.EncoderFolderError, match=r"lacks tokenizer.json, model.safetensors \("):
        vdm.text.load_text_encoder(folder)
    folder = _copy(tmp_path, "bad_json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(vdm.text.EncoderFolderError, match="config.json is not valid JSON"):
        vdm.text.load_text_encoder(folder)
    folder = _copy(tmp_path, "bad_weights")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(vdm.text.EncoderFolderError, match="model.safetensors is not a readable safetensors file"):
        vdm.text.load_text_encoder(folder)
    folder = _copy(tmp_path, "bad_tokenizer")
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(vdm.text.EncoderFolderError, match="tokenizer.json is not a readable tokenizers file"):
        vdm.text.load_text_encoder(folder)


def test_missing_tensors_and_wrong_shapes_are_named(tmp_path):
    tensors = load_file(os.path.join(T5_FOLDER, "model.safetensors"))
    folder = _copy(tmp_path)
    name = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, str(folder / "model.safetensors"))
    with pytest.raises(vdm.text.EncoderFolderError, match=f"1 T5 encoder tensors missing: {name}"):
        vdm.text.load_text_encoder(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_ff": 48}))
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(vdm.text.EncoderFolderError, match=r"wi_0.weight has shape \(32, 64\); config.json gives"):
        vdm.text.load_text_encoder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "umt5"}))
    with pytest.raises(vdm.text.EncoderFolderError, match="model_type 'umt5' is not supported"):
        vdm.text.load_text_encoder(folder)


def test_a_full_t5_checkpoint_loads_its_encoder_only(tmp_path, t5_encoder, reference):
    """T5ForConditionalGeneration's names: decoder tensors ignored; the embedding under either name, sharded."""
    tensors = load_file(os.path.join(T5_FOLDER, "model.safetensors"))
    tensors["encoder.embed_tokens.weight"] = tensors.pop("shared.weight")
    tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3), np.float32)
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-1.safetensors": names[: len(names) // 2], "model-2.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = vdm.text.load_text_encoder(folder)
    prompts = [str(p) for p in reference["prompts"]]
    np.testing.assert_array_equal(np.asarray(loaded.encode(prompts)[0]), np.asarray(t5_encoder.encode(prompts)[0]))
    assert loaded.fingerprint == t5_encoder.fingerprint  # same config, tokenizer and weights
