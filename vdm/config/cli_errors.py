"""Command-line errors as one line: absl flag parsing and --config file loading for every entry point.

A misspelt --config.K=V, an unknown flag or a config file that fails to load is reported as one
line on stderr ("Did you mean" kept, the offending flag named) with exit status 2, nothing written;
--help and --helpfull print the usage and exit 0. A --workdir that cannot take what its mode writes
(check_workdir) is one line too, before any work, and the hints that a run is untrained name the
command that trains it (untrained_hint).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

from absl import flags

from vdm.config.validation import ConfigError


def one_line(error: BaseException, argv: list[str] = ()) -> str:
    """A flag or config-file error as one line: the innermost message, the offending flag named, 'Did you mean' kept."""
    text = str(error)
    if "Error whilst parsing config file" in text or "Traceback" in text:  # a config file's own error
        lines = [ln.strip() for ln in text.splitlines() if re.match(r"\s*\w*(Error|Exception)\b.*:", ln)]
        text = lines[-1] if lines else text
    if "Failed loading config file" in text:
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
        configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")) if os.path.isdir("configs") else []
        return (
            f"--config={path}: no such config file"
            + (f" (configs/ holds {', '.join(configs)})" if configs else "")
            + "."
        )
    text = text.strip().replace("\\'", "'").replace("\\n", "\n")
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    text = " ".join(text.split())
    bad = re.findall(r"'(\w+)'", text)
    flag = next(
        (
            a.split("=")[0]
            for a in argv
            if a.startswith("--config.") and bad and a.split("=")[0].split(".")[-1] == bad[0]
        ),
        None,
    )
    if flag and "Did you mean" in text:
        return f"{flag}: the config has no key {bad[0]!r}; " + text[text.index("Did you mean") :]
    if "Unknown command line flag 'config." in text:
        text += " (--config.K=V overrides need --config=FILE; the workdir's config.json is used without one)"
    return text


HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")  # absl's (app.define_help_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing (and loading the --config file) with every error as one line on stderr, exit status 2.

    For app.run(main, flags_parser=parse_flags) in every entry point with a --config flag.
    """
    try:
        rest = flags.FLAGS(argv)
        if flags.FLAGS["config"].present:
            list(flags.FLAGS["config"].value.keys())  # the file is loaded lazily: its errors belong here
        return rest
    except SystemExit as e:  # absl's --help/--helpfull print the usage, then exit 1: asking for help is no error
        if e.code and any(a.split("=")[0].lstrip("-") in HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    except Exception as e:  # absl.flags.Error, or anything a config file raises
        print(f"error: {one_line(e, argv)}", file=sys.stderr)
        sys.exit(2)


# The config that trains each kind of run (config.task): the command a hint names.
TRAIN_CONFIGS = {
    "diffusion": "configs/fashion_mnist.py",
    "latent_diffusion": "configs/fashion_mnist.py:latent",
    "autoencoder": "configs/fashion_mnist_ae.py",
    "classifier": "configs/noisy_classifier.py",
    "attribute_classifier": "configs/shapes_attributes.py",
}


def train_command(workdir: str, task: str = "diffusion") -> str:
    """The command that trains a run of kind `task` (a key of TRAIN_CONFIGS) in `workdir`, for a hint."""
    return f"python -m vdm.main --config={TRAIN_CONFIGS[task]} --workdir={workdir}"


def untrained_hint(workdir: str, task: str, flag: str = "--workdir") -> str:
    """One line: `flag`={workdir} holds no checkpoint yet, and the commands that train it (its record, or a new run)."""
    return (
        f"{flag}={workdir} holds no checkpoint yet; train that {task} run first: python -m vdm.main "
        f"--workdir={workdir} (trains what its config.json records; a new run: {train_command(workdir, task)})."
    )


class WorkdirError(ConfigError):
    """A --workdir that cannot hold what its mode writes (a file, missing, read-only), found before any work."""


class NotSaved(Exception):
    """A mode's result, computed, that could not be (wholly) written: `result` to print, the message says what failed."""

    def __init__(self, result, message: str):
        super().__init__(message)
        self.result = result


# What each mode writes in its --workdir, beside files it creates in the folder itself: (name, is a folder).
WRITES = {
    "train": (("checkpoints", True), ("samples", True), ("tb", True), ("metrics.jsonl", False)),
    "eval": (("metrics.jsonl", False),),
    "sample": (("samples", True), ("metrics.jsonl", False)),
}
WRITTEN = {
    "train": "checkpoints/, metrics.jsonl, tb/, samples/ and config.json",
    "eval": "metrics.jsonl and config_eval.json",
    "sample": "samples/ (and metrics.jsonl for FID)",
}


def unwritable(folder: str) -> str | None:
    """Why no file can be created in the existing `folder` (an unnamed probe file is made and dropped), or None."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".vdm-probe-"):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def _creatable(workdir: str) -> None:
    """WorkdirError unless the missing folder `workdir` can be made: its nearest existing ancestor is a writable folder."""
    parent = os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise WorkdirError(f"--workdir={workdir} cannot be created: {parent} is a file, not a folder.")
    why = unwritable(parent)
    if why:
        raise WorkdirError(
            f"--workdir={workdir} cannot be created: {parent} is not writable ({why}); give a folder you can write."
        )


def check_workdir(workdir: str, mode: str) -> None:
    """WorkdirError (one line: what is wrong, what the mode writes) unless `workdir` can take what `mode` writes
    (WRITES); before any work. train creates a missing folder; eval and sample need a trained run's folder."""
    needs = f"--mode={mode} writes {WRITTEN[mode]} there"
    if not workdir.strip():
        raise WorkdirError(f"--workdir is empty; give the run's folder ({needs}).")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        wanted = "a new path, which train creates," if mode == "train" else "a trained run's folder"
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; {needs}: give {wanted} instead.")
    if not os.path.exists(workdir):
        if mode != "train":
            raise WorkdirError(
                f"--workdir={workdir} does not exist; --mode={mode} needs a trained run's folder "
                f"(train one first: {train_command(workdir)})."
            )
        return _creatable(workdir)
    copy = (
        ""
        if mode == "train"
        else f" (copy the run to a folder you can write, cp -r {workdir} NEW, and use --workdir=NEW)"
    )
    why = unwritable(workdir)
    if why:
        raise WorkdirError(f"--workdir={workdir} is not writable ({why}); {needs}{copy}. Nothing was run.")
    for name, folder in WRITES[mode]:
        path = os.path.join(workdir, name)
        if not os.path.exists(path):
            continue
        if os.path.isdir(path) != folder:
            kind = ("a file", "a folder") if folder else ("a folder", "a file")
            raise WorkdirError(
                f"{path} is {kind[0]}, but --mode={mode} writes {kind[1]} there; move it away. Nothing was run."
            )
        why = unwritable(path) if folder else (None if os.access(path, os.W_OK) else "permission denied")
        if why:
            raise WorkdirError(f"{path} is not writable ({why}); {needs}{copy}. Nothing was run.")
