"""Config checks of the noisy classifier (configs/noisy_classifier.py, vdm.tasks.classifier_task).

Like vdm.config.validation (whose helpers these use), each check raises ConfigError naming the key,
its value and what is valid.
"""

from __future__ import annotations

import ml_collections

from vdm.config.validation import (
    check_choice,
    check_int,
    divisible_by_devices,
    gamma_range,
    names_missing_keys,
    validate_optimizer,
    validate_seed_and_data,
    validate_training,
)
from vdm.core import schedules


@names_missing_keys
def validate_classifier(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid or missing field of a noisy-classifier config (configs/noisy_classifier.py)."""
    c = config
    validate_seed_and_data(c)
    check_int("model.width", c.model.width, 1)
    check_int("model.num_layers", c.model.num_layers, 1)
    check_choice("model.schedule", c.model.schedule, tuple(schedules.SCHEDULES))
    gamma_range(c.model)
    validate_optimizer(c.optimizer)
    validate_training(c.training, device_count)
    check_int("eval.batch_size", c.eval.batch_size, 1)
    divisible_by_devices("eval.batch_size", c.eval.batch_size, device_count)
