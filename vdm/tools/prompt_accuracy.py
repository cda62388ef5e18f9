"""Prompt accuracy of samples of the `shapes` scenes against their prompts (vdm.evaluation.prompt_accuracy).

    python -m vdm.tools.prompt_accuracy SAMPLES.npz --classifier=DIR [--json=FILE] [--encoding=endpoints]

SAMPLES.npz holds `samples`, the images as `python -m vdm.main --mode=sample` writes them ([N, 32, 32, 3] floats in
[-1, 1], decoded to 8 bits with the encoding of the config .json beside the .npz, else --encoding, else endpoints;
or uint8 in [0, 255]), and `prompts`, a string array [N]: the caption each sample was drawn for (shapes.caption's
grammar, read by shapes.parse_caption). DIR is an attribute classifier trained by
`python -m vdm.main --config=configs/shapes_attributes.py --workdir=DIR`. Prints one summary line and writes the
whole report (per attribute and overall, all / seen / held-out, with standard errors) as JSON to --json (default:
SAMPLES.prompt_accuracy.json beside the .npz). Exit status 0, or 1 with a one-line error.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from vdm.core import encoding
from vdm.evaluation import prompt_accuracy as pa
from vdm.evaluation.fid import load_source
from vdm.infra.fileio import atomic_write_text
from vdm.tasks.attribute_task import load_attribute_classifier


def define_flags() -> None:
    """The tool's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("classifier", None, "workdir of the attribute classifier (configs/shapes_attributes.py)")
    flags.DEFINE_string("json", None, "write the report here (default: SAMPLES.prompt_accuracy.json)")
    flags.DEFINE_enum("encoding", None, list(encoding.ENCODINGS), "of float samples (default: the .json beside)")


def load_samples(path: str, encoding_name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """(uint8 images [N, H, W, C], prompts [N]) of an .npz with `samples` and `prompts`."""
    with np.load(path, allow_pickle=False) as z:
        if "prompts" not in z.files:
            raise ValueError(f"{path} has no 'prompts' array (keys: {z.files}): give the caption of every sample.")
        prompts = [str(p) for p in z["prompts"]]
    return load_source(path, encoding_name=encoding_name), prompts


def score(path: str, classifier_dir: str, encoding_name: str | None = None) -> dict:
    """The prompt-accuracy report of SAMPLES.npz at `path` under the attribute classifier trained in classifier_dir."""
    images, prompts = load_samples(path, encoding_name)
    report = pa.prompt_accuracy(images, prompts, load_attribute_classifier(classifier_dir))
    return {"samples": path, "classifier": classifier_dir, "num_samples": len(prompts), **report}


def main(argv: list[str]) -> int:
    """Score one .npz of samples; print the summary line, write the JSON report."""
    if len(argv) != 2 or not flags.FLAGS.classifier:
        print("error: give one SAMPLES.npz and --classifier=DIR (an attribute classifier's workdir)", file=sys.stderr)
        return 2
    path = argv[1]
    try:
        report = score(path, flags.FLAGS.classifier, flags.FLAGS.encoding)
        out = flags.FLAGS.json or os.path.splitext(path)[0] + ".prompt_accuracy.json"
        atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"{pa.summary_line({g: report[g] for g in pa.GROUPS})}  report: {out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
