"""Captions of the class-labelled image sets, written from their class names with several templates.

    fashion_mnist_caption(9, 0) == "a photo of an ankle boot"

The template of example `index` is FASHION_MNIST_TEMPLATES[index % len(FASHION_MNIST_TEMPLATES)], so the caption
of an example is a pure function of (label, index) and each class is seen under every template.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# TFDS's label order: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.
FASHION_MNIST_NAMES = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_MNIST_TEMPLATES = (
    "a photo of {}",
    "a black and white photo of {}",
    "a picture of {}",
    "a small grayscale image of {}",
    "a product photo of {}",
)


def with_article(noun: str) -> str:
    """'a NOUN', or 'an NOUN' before a vowel letter ('an ankle boot')."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def fashion_mnist_caption(label: int, index: int) -> str:
    """The caption of example `index` of class `label`: template index % T filled with 'a/an CLASS NAME'."""
    if not 0 <= int(label) < len(FASHION_MNIST_NAMES):
        raise ValueError(f"Fashion-MNIST label {label!r} is not in [0, {len(FASHION_MNIST_NAMES)}).")
    template = FASHION_MNIST_TEMPLATES[int(index) % len(FASHION_MNIST_TEMPLATES)]
    return template.format(with_article(FASHION_MNIST_NAMES[int(label)]))


def fashion_mnist_captions(labels: Sequence[int] | np.ndarray) -> list[str]:
    """The caption of every example of a split, example i of class labels[i] (fashion_mnist_caption(labels[i], i))."""
    return [fashion_mnist_caption(label, i) for i, label in enumerate(np.asarray(labels).tolist())]
