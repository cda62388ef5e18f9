"""Command line: python -m vdm.main --config=configs/X.py --workdir=DIR [--mode=train|eval|sample]
[--eval_method=elbo|ode]; every setting is a config key (--eval_method and the classifier flags are
shorthands for config.eval / config.guidance keys).

Any config key can be overridden: --config.model.parameterization=x0 --config.training.num_steps=100.
Configs are locked, so a misspelt key fails at once. train resumes from DIR/checkpoints by itself,
and refuses a config whose model or objective differs from DIR/config.json. eval and sample run the
model DIR/config.json records; --config (optional there) only sets eval, sampling and guidance keys.
Every user error is one line on stderr and a non-zero exit status; the --workdir is checked before
any work (a folder the mode can write), and a result computed but not written is printed first.
--mode=eval prints one summary line (the figure, N examples, the method, the checkpoint step).

Several processes (one per host) form one job with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on each (or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID,
or Slurm / Open MPI / a TPU pod slice, detected by jax); see docs/multi-host.md.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vdm.config import cli_errors, record, validation

MODES = ("train", "eval", "sample")

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "experiment config file (configs/*.py[:arg]); optional "
    "with --mode=eval/sample or a resume: the workdir's config.json is the run",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics, samples, config")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "train (and evaluate), eval (bits/dim), sample")
# Shorthands: each writes one config key (recorded in the config files the run writes).
SHORTHANDS = {
    "eval_method": "eval.method",
    "ode_steps": "eval.ode_steps",
    "max_examples": "eval.max_examples",
    "classifier_workdir": "guidance.classifier_workdir",
    "classifier_scale": "guidance.classifier_scale",
    "classifier_label": "guidance.classifier_label",
}
flags.DEFINE_string("eval_method", None, "shorthand for --config.eval.method (elbo | ode)")
flags.DEFINE_integer("ode_steps", None, "shorthand for --config.eval.ode_steps")
flags.DEFINE_integer("max_examples", None, "shorthand for --config.eval.max_examples")
flags.DEFINE_string("classifier_workdir", None, "shorthand for --config.guidance.classifier_workdir")
flags.DEFINE_float("classifier_scale", None, "shorthand for --config.guidance.classifier_scale")
flags.DEFINE_integer("classifier_label", None, "shorthand for --config.guidance.classifier_label")

# Multi-process jobs (one process per host; see docs/multi-host.md). Unset: the
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment, Slurm, Open MPI or a
# TPU pod slice decide, and nothing of these means a single process.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "multi-process: host:port of process 0's coordinator (same on every process)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes in the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process: this process's index in [0, num_processes)")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout",
    300,
    "multi-process: seconds to wait for every process to connect, then exit with status 3 and a message",
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "multi-process: seconds without a heartbeat after which a process counts as dead and every other one aborts",
)
_LOCAL_DEVICE_COUNT = flags.DEFINE_integer(
    "local_device_count", 0, "CPU testing: split this host's CPU into N devices (0: leave jax's default)"
)
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids",
    None,
    "multi-process: the GPUs this process drives, e.g. "
    "0,1,2,3 (unset: jax's choice; under Slurm that is one GPU per task)",
)
flags.mark_flags_as_required(["workdir"])


def apply_shorthands(config, values: dict) -> None:
    """Write each given shorthand flag (value not None) into its config key (SHORTHANDS)."""
    for flag, value in values.items():
        if value is not None:
            section, key = SHORTHANDS[flag].split(".")
            config[section][key] = value


def join_job() -> str:
    """Join the multi-process job the flags or the environment describe (if any); returns a log prefix naming this process."""
    if _COORDINATOR.value is None and (_NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None):
        raise validation.ConfigError(
            "--num_processes/--process_id need --coordinator_address "
            "(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."
        )
    from vdm.infra import parallel  # jax starts here

    parallel.set_local_device_count(_LOCAL_DEVICE_COUNT.value)
    parallel.initialize_distributed(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        init_timeout=_INIT_TIMEOUT.value,
        heartbeat_timeout=_HEARTBEAT_TIMEOUT.value,
        local_device_ids=[int(i) for i in _LOCAL_DEVICE_IDS.value or []] or None,
    )
    import jax

    return f"[process {jax.process_index()}/{jax.process_count()}] " if jax.process_count() > 1 else ""


def resolve_config(mode: str, given, workdir: str, overridden: list[str]):
    """The config a mode runs: train the given one (resuming: the recorded one if none is given); eval and sample
    the workdir's recorded run with the eval/sampling/guidance keys of `given` (record.inference_config)."""
    if mode == "train":
        if given is not None:
            return given
        recorded = record.load_recorded(workdir)
        if recorded is None:
            raise validation.ConfigError(
                f"--config is needed to start a run ({workdir} holds no config.json to "
                "resume), e.g. --config=configs/fashion_mnist.py."
            )
        recorded.lock()
        return recorded
    config, ignored = record.inference_config(workdir, given, overridden)
    if ignored:
        logging.getLogger("vdm.main").info(
            "--mode=%s uses the run's recorded model, data and loss (%s/config.json); %d key(s) of --config differ "
            "and are not used: %s",
            mode,
            workdir,
            len(ignored),
            ", ".join(sorted(ignored)),
        )
    return config


def run(mode: str, config, workdir: str):
    """Dispatch to one library function: the config's Task's training (registry.train), modes.evaluate or modes.sample."""
    from vdm.cli import modes  # after flag parsing: jax starts here
    from vdm.tasks import registry

    if mode == "eval":
        return modes.evaluate(config, workdir)
    if mode == "sample":
        return modes.sample(config, workdir)
    return registry.train(config, workdir)


def main(argv: list[str]) -> int:
    """Run the chosen mode (the config is validated once, by its Task's build); user errors print one clear line and exit 1."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/jax info lines are noise here
    logging.getLogger("vdm").setLevel(logging.INFO)  # ... ours (resume, fallback) are not
    from vdm.tasks.loop import USER_ERRORS, Interrupted

    prefix = ""
    try:
        cli_errors.check_workdir(_WORKDIR.value, _MODE.value)  # before any work: a file, missing, read-only
        given = _CONFIG.value if flags.FLAGS["config"].present else None
        overridden = list(config_flags.get_override_values(flags.FLAGS["config"])) if given is not None else []
        config = resolve_config(_MODE.value, given, _WORKDIR.value, overridden)
        apply_shorthands(config, {f: flags.FLAGS[f].value for f in SHORTHANDS})
        prefix = join_job()
        if prefix:  # every log line says which process wrote it
            absl_logging.get_absl_handler().setFormatter(
                logging.Formatter(prefix + "%(levelname).1s %(asctime)s %(name)s] %(message)s")
            )
            logging.getLogger("vdm.main").info("--mode=%s in %s", _MODE.value, _WORKDIR.value)
        try:
            result = run(_MODE.value, config, _WORKDIR.value)
        except Interrupted as e:
            print(f"{prefix}{e}", file=sys.stderr)
            return 128 + e.signum
        except cli_errors.NotSaved as e:  # computed, not (wholly) written: the result first, then what failed
            report(_MODE.value, config, e.result, prefix)
            print(f"{prefix}error: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
    except USER_ERRORS as e:
        print(f"{prefix}error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    report(_MODE.value, config, result, prefix)
    return 0


def report(mode: str, config, result, prefix: str) -> None:
    """Print a mode's result (JSON on stdout) and, once per job, its summary line on stderr (train, eval)."""
    if result is not None:
        print(json.dumps(result, indent=1, sort_keys=True) if isinstance(result, dict) else result)
    if prefix and not prefix.startswith("[process 0/"):  # the summary once
        return
    if mode == "train" and isinstance(result, dict):
        from vdm.config.text_checks import conditioning_note
        from vdm.tasks import registry

        first, *rest = registry.entry(config).summary(result, _WORKDIR.value).split("\n")
        print("\n".join([first + conditioning_note(config), *rest]), file=sys.stderr)
    elif mode == "eval" and isinstance(result, dict):
        from vdm.cli import modes

        print(modes.eval_summary(config, result), file=sys.stderr)


def entry() -> None:
    """The `vdm` console script (pyproject.toml): the same as python -m vdm.main."""
    app.run(main, flags_parser=cli_errors.parse_flags)


if __name__ == "__main__":
    entry()
