"""The attribute classifier of the `shapes` scenes: per cell of the 3 x 3 grid, is an object there, and its shape,
colour and size (the evaluator of prompt accuracy, vdm.evaluation.prompt_accuracy).

Per cell rather than per object: an image holds at most one object per cell, so the cells are a fixed set of
slots with no matching between predicted and true objects (a DETR-style set loss would need one), and 1 or 2
objects (or any number) are the same problem. Clean images in [-1, 1] [B, 32, 32, 3] -> logits per cell.

The network: a conv stem at full resolution (a small shape is 5 x 5 pixels; its outline tells a triangle from a
diamond), then per level a 3x3 conv and a 3x3 conv of stride 2 (ReLU), the feature map flattened (position is in
the layout, so no global pool) into a hidden Dense layer and one Dense head for every cell's logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm.data import shapes

Array = jax.Array
NUM_CELLS = len(shapes.ROWS) * len(shapes.COLS)
HEADS = {"present": 2, "shape": len(shapes.SHAPES), "colour": len(shapes.COLOURS), "size": len(shapes.SIZES)}


class AttributeClassifier(nn.Module):
    """x [B, H, W, 3] in [-1, 1] -> {'present' [B, 9, 2], 'shape' [B, 9, 4], 'colour' [B, 9, 6], 'size' [B, 9, 3]}."""

    width: int = 16
    num_levels: int = 2
    hidden: int = 256

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        """Logits per cell and head (HEADS), cell = 3 row + col."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must be RGB images [B, H, W, 3], got shape {x.shape}")
        if min(self.width, self.num_levels, self.hidden) < 1:
            raise ValueError(
                f"width, num_levels and hidden must be >= 1, got {self.width}, {self.num_levels}, {self.hidden}"
            )
        h = nn.relu(nn.Conv(self.width, (3, 3), name="conv_in")(x))
        for i in range(self.num_levels):
            h = nn.relu(nn.Conv(self.width * 2**i, (3, 3), name=f"conv_{i}")(h))
            h = nn.relu(nn.Conv(self.width * 2 ** (i + 1), (3, 3), strides=(2, 2), name=f"down_{i}")(h))
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(h.reshape(h.shape[0], -1)))
        logits = nn.Dense(NUM_CELLS * sum(HEADS.values()), name="heads")(h).reshape(h.shape[0], NUM_CELLS, -1)
        splits = np.cumsum(list(HEADS.values()))[:-1].tolist()  # static split points
        return dict(zip(HEADS, jnp.split(logits, splits, axis=-1)))


def from_config(model_config) -> AttributeClassifier:
    """The AttributeClassifier of config.model (configs/shapes_attributes.py: width, num_levels, hidden)."""
    return AttributeClassifier(width=model_config.width, num_levels=model_config.num_levels, hidden=model_config.hidden)
