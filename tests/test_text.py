"""Tests of vdm.text: the Flax T5 encoder against transformers' T5EncoderModel (a fixture written by
scripts/make_t5_fixture.py; no torch here), the folder loader's errors, the caption-embedding cache, and the
word vocabulary and transformer trained from scratch."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vdm.text
from vdm.data import shapes
from vdm.text import cache, encoder, t5, vocab

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


def _counting(monkeypatch):
    calls = []
    original = encoder.TextEncoder.encode_ids

    def encode_ids(self, ids, mask):
        calls.append(len(ids))
        return original(self, ids, mask)

    monkeypatch.setattr(encoder.TextEncoder, "encode_ids", encode_ids)
    return calls


def test_caption_embeddings_are_computed_once_then_read_from_the_cache(tmp_path, monkeypatch, t5_encoder):
    captions = [shapes.caption(o) for o in shapes.generate(40, 0, "train")[2]] * 2  # duplicates share a row
    distinct = len(set(captions))
    calls = _counting(monkeypatch)
    first = vdm.text.caption_embeddings(t5_encoder, captions, str(tmp_path), batch_size=16)
    assert len(calls) == -(-distinct // 16) and len(first.captions) == distinct  # one row per distinct caption
    second = vdm.text.caption_embeddings(t5_encoder, captions[::-1], str(tmp_path), batch_size=16)
    assert len(calls) == -(-distinct // 16)  # read from the cache: no encoder call
    for name in ("sequence", "mask", "pooled"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.captions == first.captions and len(os.listdir(tmp_path)) == 1
    rows = first.rows(captions)
    for i in (0, 7, 41):
        seq, mask, pooled = (np.asarray(a)[0] for a in t5_encoder.encode([captions[i]]))
        n = int(mask.sum())
        assert first.captions[rows[i]] == captions[i] and first.mask[rows[i]].sum() == n
        np.testing.assert_allclose(first.sequence[rows[i], :n], seq[:n], atol=1e-5)
        np.testing.assert_allclose(first.pooled[rows[i]], pooled, atol=1e-5)
    with pytest.raises(KeyError, match=f"not among the {distinct} cached captions"):
        first.rows(["a huge circle"])


def test_another_encoder_or_caption_set_gets_its_own_cache_file(tmp_path, monkeypatch, t5_encoder):
    captions = ["a small red circle at the top left", "a photo of an ankle boot"]
    calls = _counting(monkeypatch)
    vdm.text.caption_embeddings(t5_encoder, captions, str(tmp_path))
    params = jax.tree.map(lambda p: p * 1.01, t5_encoder.params)
    other = encoder.TextEncoder(t5_encoder.tokenizer, t5_encoder.module, params)
    assert other.fingerprint != t5_encoder.fingerprint
    vdm.text.caption_embeddings(other, captions, str(tmp_path))
    vdm.text.caption_embeddings(t5_encoder, captions[:1], str(tmp_path))
    assert len(calls) == 3 and len(os.listdir(tmp_path)) == 3
    path = tmp_path / f"embeddings-{cache.cache_key(t5_encoder, captions)[:24]}.npz"
    path.write_bytes(b"not a zip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = vdm.text.caption_embeddings(t5_encoder, captions, str(tmp_path))
    assert len(calls) == 4 and any("recomputing the caption embeddings" in str(w.message) for w in caught)
    assert again.sequence.shape[0] == 2


def test_data_cache_dir_sits_beside_the_data(tmp_path):
    path = vdm.text.data_cache_dir({"dataset": "shapes", "data_dir": str(tmp_path)})
    assert path == os.path.join(str(tmp_path), "shapes", "vdm_text")


def test_word_vocabulary_of_the_shapes_captions():
    captions = [shapes.caption(o) for o in shapes.generate(300, 0, "train")[2]]
    words = vdm.text.WordVocabulary.from_captions(captions)
    positions = {w for row in shapes.POSITIONS for p in row for w in p.split()}
    expected = {"a", "and"} | set(shapes.SIZES) | set(shapes.COLOUR_NAMES) | set(shapes.SHAPES) | positions
    assert set(words.words) == expected and words.size == len(expected) + 1
    ids, mask = words.tokenize(["A small red Circle, at the top left!", "a"])
    assert ids.shape == (2, 8) and mask.sum(1).tolist() == [8, 1] and (ids[~mask] == 0).all()
    assert [words.words[i - 1] for i in ids[0]] == "a small red circle at the top left".split()
    assert words.tokenize(["a"], length=5)[0].shape == (1, 5)
    assert vdm.text.WordVocabulary.from_json(words.to_json()).words == words.words
    assert vocab.words_of("A T-shirt, please!") == ["a", "t-shirt", "please"]


def test_an_unknown_word_is_one_line_naming_it_and_the_vocabulary_size():
    words = vdm.text.WordVocabulary.from_captions(["a red circle", "a blue square"])
    with pytest.raises(vdm.text.UnknownWordError) as err:
        words.tokenize(["a red zebra"])
    message = str(err.value)
    assert "\n" not in message and "'zebra'" in message and "5 words (vocabulary size 6" in message
    with pytest.raises(ValueError, match="more than the length 2"):
        words.tokenize(["a red circle"], length=2)
    with pytest.raises(TypeError, match="list of strings"):
        words.tokenize("a red circle")


@pytest.fixture(scope="module")
def scratch():
    words = vdm.text.WordVocabulary.from_captions(["a small red circle at the top left", "a large blue square"])
    module = vdm.text.ScratchTextEncoder(vocab_size=words.size, max_length=12, width=16, depth=2, num_heads=2)
    ids, mask = words.tokenize(["a red circle", "a large blue square at the top left", ""])
    params = jax.jit(module.init)(jax.random.key(0), ids, mask)["params"]
    return words, module, params, ids, mask


def test_scratch_encoder_gives_the_same_triple_and_ignores_padding(scratch):
    words, module, params, ids, mask = scratch
    apply = jax.jit(lambda ids, mask: module.apply({"params": params}, ids, mask))
    sequence, out_mask, pooled = apply(ids, mask)
    assert sequence.shape == (3, 8, 16) and pooled.shape == (3, 16) and out_mask.dtype == bool
    np.testing.assert_allclose(pooled[2], 0.0)  # the empty prompt (classifier-free guidance's null): no tokens
    assert np.all(np.isfinite(sequence))
    padded_ids, padded_mask = words.tokenize(["a red circle"], length=12)
    longer = apply(padded_ids, padded_mask)
    np.testing.assert_allclose(longer[0][0, :3], sequence[0, :3], atol=1e-5)
    np.testing.assert_allclose(longer[2][0], pooled[0], atol=1e-5)
    enc = encoder.TextEncoder(words, module, params)  # the one interface over a trained-from-scratch encoder
    np.testing.assert_allclose(enc.encode(["a red circle"])[2][0], pooled[0], atol=1e-6)
    assert enc.dim == 16
    with pytest.raises(ValueError, match="more than the encoder's max_length 12"):
        module.apply({"params": params}, jnp.zeros((1, 13), jnp.int32), jnp.ones((1, 13), bool))


def test_scratch_encoder_params_receive_gradients_through_its_outputs(scratch):
    _, module, params, ids, mask = scratch
    target = jax.random.normal(jax.random.key(1), (3, 16))

    @jax.jit
    def loss(p):
        sequence, m, pooled = module.apply({"params": p}, ids, mask)
        cross = jnp.sum(sequence * m[..., None], axis=(1, 2))  # what a cross-attending network reads
        return jnp.mean((pooled - target) ** 2) + 1e-3 * jnp.mean(cross**2)

    grads = jax.jit(jax.grad(loss))(params)
    norms = {jax.tree_util.keystr(k): float(jnp.abs(g).sum()) for k, g in jax.tree_util.tree_leaves_with_path(grads)}
    assert all(n > 0 for n in norms.values()), [k for k, n in norms.items() if n == 0]
    assert loss(jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)) < loss(params)  # a step of descent helps
