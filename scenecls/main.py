"""scenecls command line: ``scenecls --config=configs/X.py --workdir=DIR --mode=MODE``.

Modes: ``train`` (prepare data, two-stage training, then test evaluation),
``evaluate`` (best checkpoint on the test split or --config.eval.source_dir),
``infer`` (patch-based major/secondary classes of --config.infer.inputs),
``prepare`` (only build the dataset and print its report), ``synth``
(write the synthetic demo dataset to <workdir>/synthetic_source,
to see the expected folder layout) and ``convert`` (read --config.pretrained
once, strictly, and write it as a checkpoint in <workdir>/backbone that
loads fast: --config.pretrained=<workdir>/backbone), ``export`` (the best model as SavedModel, TFLite
and ONNX in <workdir>/export, each checked against the JAX model; see scenecls/export) and ``serve`` (a
web app and JSON API for patch inference on --config.serve.host:port).
"""

import contextlib
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/default.py; override fields with --config.a.b=v.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for prepared data, checkpoints and outputs.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "evaluate", "infer", "prepare", "synth", "convert", "export", "serve"],
    "What to do.",
)
# Modes that use TensorFlow (tf.data, tfds, Keras weight files, the exporters); the others never import it.
_TENSORFLOW_MODES = ("train", "evaluate", "prepare", "synth", "convert", "export")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run (jax.distributed); without the three flags below the cluster (SLURM, "
    "GKE/TPU, Open MPI) is detected from the environment. See docs/scaling.md.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for --distributed (default: from the cluster)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the --distributed run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (0 .. num_processes - 1).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
    """Drops INFO chatter of orbax (it logs through absl too); warnings still pass."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> int:
    """Dispatches to one library function per mode; returns the exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from scenecls import console

    workdir = _WORKDIR.value
    log_name = console.LOG_NAME if not _PROCESS_ID.value else f"log.{_PROCESS_ID.value}.txt"
    with console.session(workdir, flags.FLAGS.verbosity, log_name):
        return _run_mode(_CONFIG.value, workdir, _MODE.value)


def _run_mode(config, workdir: str, mode: str) -> int:
    """Runs ``mode``; expected failures end with one line on stderr and status 1."""
    if mode in _TENSORFLOW_MODES:  # tf.data, tfds, Keras weights, export; keep TF off any GPU (JAX's)
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    import jax

    # Persistent compilation cache: the second run of any command skips XLA compilation.
    cache_dir = os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "scenecls", "jax"
    )
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    from scenecls import config as config_lib
    from scenecls import parallel
    from scenecls.train import guard
    from scenecls.workdir import lock as workdir_lock

    logging.get_absl_handler().addFilter(_QuietLibraries())
    if _DISTRIBUTED.value:  # before anything touches a device
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not parallel.is_primary():  # process 0 logs and writes files; the others only warn
        logging.set_verbosity(logging.WARNING)
    logging.info("JAX devices: %s", jax.devices())
    lock = contextlib.ExitStack()
    try:
        config_lib.validate(config)
        if mode in ("train", "prepare", "synth", "convert", "export") and parallel.is_primary():
            lock.enter_context(workdir_lock.locked(workdir))  # evaluate and infer only read (see lock)
        if mode == "train":
            from scenecls.patches import demo
            from scenecls.train import train_and_evaluate

            train_and_evaluate(config, workdir)
            if config.infer.demo_composites:
                return demo.run_demo_inference(config, workdir)
        elif mode == "evaluate":
            from scenecls.evaluation import evaluate

            evaluate(config, workdir)
        elif mode == "infer":
            from scenecls.patches import run_inference

            return run_inference(config, workdir)
        elif mode == "serve":
            from scenecls.serve import serve

            return serve(config, workdir)
        elif mode == "prepare":
            from scenecls.data import builder

            parallel.primary_first(lambda: builder.prepare(config.data, workdir))
        elif mode == "synth":
            from scenecls.data import builder

            if not config.data.synthetic_per_class:
                raise ValueError("--mode=synth needs --config.data.synthetic_per_class=N (images per class)")
            print(f"Synthetic dataset in {builder.resolve_source_dir(config.data, workdir)}")
        elif mode == "convert":
            from scenecls.models import weights

            destination = os.path.join(workdir, "backbone")
            if config.pretrained in ("", "none"):
                raise ValueError(
                    "--mode=convert needs --config.pretrained=SOURCE (a weights file or keras:imagenet)"
                )
            if os.path.exists(destination):
                raise ValueError(f"{destination} already exists; move it away or use another --workdir")
            weights.convert(config.pretrained, destination)
            print(f"Wrote the backbone of {config.pretrained}: use --config.pretrained={destination}")
        elif mode == "export":
            from scenecls.export import export_workdir

            export_workdir(config, workdir)
    except guard.Interrupted as e:  # SIGINT/SIGTERM: the state is saved; say how to resume.
        print(f"scenecls: {e}", file=sys.stderr)
        return e.exit_status
    except (ValueError, OSError) as e:  # Expected failures (bad input) end with one line, not a traceback.
        logging.debug("Failure details", exc_info=True)
        print(f"scenecls: error: {e}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0


def run() -> None:
    """Console-script entry point."""
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
