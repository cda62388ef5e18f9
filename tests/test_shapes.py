"""Tests of the captioned data sets: the procedural shapes scenes (vdm.data.shapes) and Fashion-MNIST's captions."""

from __future__ import annotations

import numpy as np
import pytest

from vdm.data import captions, pipeline, shapes, tfds_sets

SHAPES_CONFIG = {"dataset": "shapes", "num_train": 300, "num_test": 120, "data_seed": 3}


@pytest.fixture(scope="module")
def train():
    return shapes.generate(300, 3, "train")


def _pairs(objects: np.ndarray) -> set[tuple[str, str]]:
    present = objects[objects[:, 0] >= 0]
    return {(shapes.SHAPES[s], shapes.COLOUR_NAMES[c]) for s, c in present[:, :2].tolist()}


def test_an_example_is_a_pure_function_of_seed_split_and_index(train):
    images, labels, objects, centres = train
    again = shapes.generate(40, 3, "train")
    for a, b in zip(again, train):
        np.testing.assert_array_equal(a, b[:40])  # example i does not depend on the split's size
    for i in (0, 7, 299):
        o, c = shapes.example_attributes(3, "train", i)
        np.testing.assert_array_equal(o, objects[i])
        np.testing.assert_array_equal(shapes.render(o[None], c[None])[0], images[i])
    other = shapes.generate(40, 4, "train")[2]
    assert not np.array_equal(other, objects[:40])
    assert images.dtype == np.uint8 and images.shape == (300, 32, 32, 3)
    np.testing.assert_array_equal(labels, objects[:, 0, 0] * len(shapes.COLOURS) + objects[:, 0, 1])
    counts = (objects[:, :, 0] >= 0).sum(axis=1)
    assert set(counts.tolist()) == {1, 2} and 0.35 < np.mean(counts == 2) < 0.65


def test_held_out_pairs_never_in_train_and_one_in_every_test_image(train):
    held = set(shapes.HELD_OUT)
    big_train = shapes.generate(2000, 0, "train")[2]
    assert not any(_pairs(o) & held for o in big_train)
    test_objects = shapes.generate(400, 0, "test")[2]
    for o in test_objects:
        present = o[o[:, 0] >= 0]
        is_held = [(shapes.SHAPES[s], shapes.COLOUR_NAMES[c]) in held for s, c in present[:, :2].tolist()]
        assert sum(is_held) == 1, o
    assert set().union(*(_pairs(o) for o in test_objects)) >= held  # every held-out pair is tested
    seen = set().union(*(_pairs(o) for o in big_train))
    assert seen == {(s, c) for s in shapes.SHAPES for c in shapes.COLOUR_NAMES} - held
    # every held-out pair's words are seen in training, only not together
    assert {s for s, _ in held} <= {s for s, _ in seen} and {c for _, c in held} <= {c for _, c in seen}


def test_caption_parses_back_to_the_attributes(train):
    _, _, objects, _ = train
    for o in objects:
        text = shapes.caption(o)
        np.testing.assert_array_equal(shapes.parse_caption(text), o)
        assert text.count(" and ") == (o[:, 0] >= 0).sum() - 1
    assert shapes.caption(np.array([[0, 0, 0, 0, 0], [-1] * 5])) == "a small red circle at the top left"
    two = np.array([[1, 2, 2, 1, 1], [2, 5, 1, 2, 2]])
    assert shapes.caption(two) == "a large blue square in the centre and a medium white triangle at the bottom right"
    with pytest.raises(ValueError, match="SIZE COLOUR SHAPE POSITION"):
        shapes.parse_caption("a huge red circle at the top left")


def test_pixels_agree_with_the_attributes(train):
    images, _, objects, centres = train
    background = np.ones(images.shape[:3], bool)
    for img, obj, cen, bg in zip(images, objects, centres, background):
        for (shape, colour, size, row, col), (cy, cx) in zip(obj.tolist(), cen.tolist()):
            if shape < 0:
                continue
            rgb = np.array(shapes.COLOURS[shapes.COLOUR_NAMES[colour]])
            np.testing.assert_array_equal(img[int(cy), int(cx)], rgb)  # full coverage at the centre
            assert abs(cy - shapes.CELL_CENTRES[row]) <= shapes.JITTER[size]  # in its cell
            assert abs(cx - shapes.CELL_CENTRES[col]) <= shapes.JITTER[size]
            r = shapes.HALF_EXTENT[size]
            box = (slice(int(cy - r), int(np.ceil(cy + r))), slice(int(cx - r), int(np.ceil(cx + r))))
            channel = int(np.argmax(rgb))
            covered = img[box][..., channel].astype(np.float64).sum() / rgb[channel]  # sum of coverage = area
            np.testing.assert_allclose(covered, shapes.area(shape, size), rtol=0.02)
            bg[box] = False
        assert not img[bg].any()  # black outside the objects' boxes


def test_areas_grow_with_the_size_class():
    for shape in range(len(shapes.SHAPES)):
        areas = [shapes.area(shape, size) for size in range(len(shapes.SIZES))]
        assert areas == sorted(areas) and areas[-1] > 2.5 * areas[0]


def test_shapes_in_the_pipeline_yields_images_attributes_and_example_ids():
    info = pipeline.get_dataset_info(SHAPES_CONFIG)
    assert (info.shape, info.num_train, info.num_test, info.num_classes) == ((32, 32, 3), 300, 120, 24)
    assert info.discrete
    images, labels = pipeline.load_arrays(SHAPES_CONFIG, "train")
    attributes = pipeline.load_extras(SHAPES_CONFIG, "train")["attributes"]
    texts = pipeline.load_captions(SHAPES_CONFIG, "train")
    assert len(texts) == 300 and texts[5] == shapes.caption(attributes[5])
    batch = next(pipeline.train_iterator(SHAPES_CONFIG, 16, seed=0, start_step=3))
    ex = batch["example"]
    assert batch["x"].shape == (16, 32, 32, 3) and batch["x"].min() >= -1 and batch["x"].max() <= 1
    np.testing.assert_allclose(batch["x"], images[ex] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(batch["attributes"], attributes[ex])
    np.testing.assert_array_equal(batch["label"], labels[ex])
    seen = np.concatenate([b["example"][b["mask"]] for b in pipeline.eval_iterator(SHAPES_CONFIG, 50)])
    np.testing.assert_array_equal(seen, np.arange(120))  # the test split once, in order
    test_attributes = pipeline.load_extras(SHAPES_CONFIG, "test")["attributes"]
    assert all(_pairs(o) & set(shapes.HELD_OUT) for o in test_attributes)


def test_shapes_refuses_flips_and_unknown_splits():
    with pytest.raises(ValueError, match="swap left and right"):
        pipeline.parse_config({**SHAPES_CONFIG, "random_flip": True})
    with pytest.raises(ValueError, match="Unknown split"):
        shapes.example_attributes(0, "validation", 0)
    with pytest.raises(ValueError, match="has no captions; captioned data sets: fashion_mnist, shapes"):
        pipeline.load_captions({"dataset": "mixture2d"}, "train")


def test_fashion_mnist_captions_from_class_names():
    assert captions.fashion_mnist_caption(9, 0) == "a photo of an ankle boot"
    assert captions.fashion_mnist_caption(0, 1) == "a black and white photo of a t-shirt"
    templates = len(captions.FASHION_MNIST_TEMPLATES)
    for label, name in enumerate(captions.FASHION_MNIST_NAMES):
        texts = {captions.fashion_mnist_caption(label, i) for i in range(3 * templates)}
        assert len(texts) == templates and all(name in t for t in texts)
        assert captions.fashion_mnist_caption(label, 12345) == captions.fashion_mnist_caption(label, 12345 + templates)
    with pytest.raises(ValueError, match="not in"):
        captions.fashion_mnist_caption(10, 0)


def test_fashion_mnist_load_captions_follows_the_labels(tmp_path):
    labels = np.array([9, 0, 3, 3, 7], np.int32)
    info = {"shape": (28, 28, 1), "num_train": 5, "num_test": 5, "num_classes": 10}
    images = np.zeros((5, 28, 28, 1), np.uint8)
    for split in ("train", "test"):
        tfds_sets.write_array_cache("fashion_mnist", str(tmp_path), split, images, labels, info)
    cfg = {"dataset": "fashion_mnist", "data_dir": str(tmp_path)}
    texts = pipeline.load_captions(cfg, "test")
    assert texts == [captions.fashion_mnist_caption(int(label), i) for i, label in enumerate(labels)]
    assert texts[0] == "a photo of an ankle boot" and "dress" in texts[2] and "dress" in texts[3]
    batch = next(pipeline.eval_iterator(cfg, 4))
    np.testing.assert_array_equal(batch["example"], np.arange(4))
