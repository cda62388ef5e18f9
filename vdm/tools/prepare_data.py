"""Prepare a TFDS data set once from local files (idempotent), so training reads it offline without TensorFlow.

    python -m vdm.tools.prepare_data --dataset=fashion_mnist [--data_dir=DIR] [--manual_dir=DIR]

Exit status 0, or 2 with a one-line error (the message says where the source files are looked for).
"""

from __future__ import annotations

import sys

from absl import app, flags

from vdm.data import tfds_sets
from vdm.data.tfds_sets import DatasetNotFoundError


def prepare_command(dataset: str, data_dir: str | None = None, manual_dir: str | None = None) -> int:
    """Prepare a TFDS data set once from local files (idempotent); exit code 0, or 2 with the error."""
    try:
        path = tfds_sets.prepare(dataset, data_dir, source_dir=manual_dir)
        info = tfds_sets.split_info(dataset, tfds_sets.resolve_data_dir(data_dir))
    except (DatasetNotFoundError, tfds_sets.ChecksumError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{dataset} prepared in {path}: {info}")
    return 0


def define_flags() -> None:
    """The tool's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_enum("dataset", None, list(tfds_sets.IMAGE_DATASETS), "TFDS data set to prepare")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    flags.DEFINE_string(
        "manual_dir",
        None,
        "source files; default for fashion_mnist: "
        f"${tfds_sets.FASHION_MNIST_DIR_ENV} or {tfds_sets.DEFAULT_FASHION_MNIST_DIR}, "
        "else DATA_DIR/downloads/manual",
    )
    flags.mark_flag_as_required("dataset")


def main(argv: list[str]) -> int:
    """absl entry point: `python -m vdm.tools.prepare_data --dataset=NAME [--data_dir=DIR] [--manual_dir=DIR]`."""
    if argv[1:]:
        print(
            f"unexpected arguments {argv[1:]}; usage: python -m vdm.tools.prepare_data --dataset=NAME "
            "[--data_dir=DIR] [--manual_dir=DIR]",
            file=sys.stderr,
        )
        return 2
    return prepare_command(flags.FLAGS.dataset, flags.FLAGS.data_dir, flags.FLAGS.manual_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
