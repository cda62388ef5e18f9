"""Inception FID and KID between two image sources, or the Inception weights' preparation (vdm.evaluation.fid).

    python -m vdm.tools.fid prepare
    python -m vdm.tools.fid A B [--num=N] [--num_b=N] [--json=FILE] [--resize=tf1] ...

A source is an .npz of samples, a folder of PNGs, or NAME:SPLIT of a prepared data set. Exit status 0, or 1 with
a one-line error.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from vdm.core import encoding
from vdm.data import tfds_sets
from vdm.evaluation import fid_weights
from vdm.evaluation.fid import DEFAULT_BATCH, RESIZE_MODES, compare
from vdm.infra.fileio import atomic_write


def define_flags() -> None:
    """The tool's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_integer("num", None, "use the first NUM images of each source")
    flags.DEFINE_integer("num_b", None, "use the first NUM_B images of B (default: --num)")
    flags.DEFINE_string("json", None, "also write the result as JSON to this file")
    flags.DEFINE_enum("resize", "tf1", list(RESIZE_MODES), "resize to 299x299 as")
    flags.DEFINE_enum(
        "encoding",
        None,
        list(encoding.ENCODINGS),
        "of float samples (default: the config .json beside the .npz, else endpoints)",
    )
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH, "images per Inception batch")
    flags.DEFINE_integer("kid_subsets", 100, "KID: number of disjoint subsets (as many as fit, at least 10)")
    flags.DEFINE_integer("kid_subset_size", 1000, "KID: images per subset (fewer where 10 subsets would not fit)")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")


def main(argv: list[str]) -> int:
    """`prepare` (the weights) or two sources A B (prints FID and KID; --json writes them)."""
    sources = argv[1:]
    try:
        if sources == ["prepare"]:
            print(f"FID Inception weights: {fid_weights.prepare()} (sha256 {fid_weights.verify()})")
            return 0
        if len(sources) != 2:
            print("error: give 'prepare' or exactly two sources (.npz, PNG folder, NAME:SPLIT)", file=sys.stderr)
            return 2
        r = compare(
            *sources,
            num=flags.FLAGS.num,
            num_b=flags.FLAGS.num_b,
            resize=flags.FLAGS.resize,
            kid_subsets=flags.FLAGS.kid_subsets,
            kid_subset_size=flags.FLAGS.kid_subset_size,
            encoding_name=flags.FLAGS.encoding,
            data_dir=flags.FLAGS.data_dir,
            batch_size=flags.FLAGS.batch_size,
            progress=True,
        )
    except (fid_weights.WeightsError, ValueError, tfds_sets.DatasetNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(
        f"FID {r['fid']:.4f}   KID {r['kid']:.6f} +- {r['kid_se']:.6f} (standard error over "
        f"{r['kid_subsets']} disjoint subsets of {r['kid_subset_size']})   "
        f"(N = {r['num_a']}, {r['num_b']}; resize {flags.FLAGS.resize})"
    )
    if flags.FLAGS.json:
        r = {
            **r,
            "a": sources[0],
            "b": sources[1],
            "resize": flags.FLAGS.resize,
            "metric": "Inception-v3 2015-12-05 pool features (vdm.fid)",
        }
        atomic_write(flags.FLAGS.json, lambda f: f.write(json.dumps(r, indent=1, sort_keys=True).encode()), binary=True)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
