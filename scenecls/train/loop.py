"""Two-stage transfer learning: ``train_and_evaluate`` sequences the stages, ``run_stage`` runs one.

Each stage trains what its config's ``trainable`` rules select (see ``optim``) with Adam, applies early
stopping and reduce-LR-on-plateau on the validation split (``schedule``), and keeps its work safe with
checkpoints (``guard``): re-running on the same workdir resumes where the last run stopped and ends where
an uninterrupted run would.
"""

import contextlib
import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from scenecls import console, parallel
from scenecls.config import STAGES
from scenecls.data import builder, pipeline
from scenecls.evaluation import calibrate, evaluate, predict_split
from scenecls.train import feature_cache, history, optim
from scenecls.train.guard import SaveTimer, StageGuard, StopRequests
from scenecls.train.schedule import EpochPosition, StageProgress, update_progress
from scenecls.train.stage import Stage, initial_variables, restore_target, setup_stage, upgrade_state
from scenecls.train.step import TrainState
from scenecls.workdir import checkpoints, run_files


class RunData(NamedTuple):
    """The prepared data of a run and what training takes from it."""

    prepared: builder.PreparedData
    class_weights: np.ndarray  # per class, in the loss
    steps: int  # training steps per epoch
    memory: pipeline.InMemory | None  # this process's decoded training images (config.data.in_memory)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Prepares data, trains both stages (resuming if possible), evaluates the best model on the test split.

    Returns the test metrics (also written to ``<workdir>/eval/metrics.json``).
    """
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.create_mesh()
    for field in ("batch_size", "eval_batch_size"):
        parallel.check_divisible(config[field], field, mesh.devices.size)
    data = prepare_run(config, workdir)
    num_classes = len(data.prepared.classes)
    latest = checkpoints.latest_manager(workdir)
    resume = restore_run(config, latest, num_classes, mesh)
    records = resume.meta["history"] if resume else {}
    variables, epoch_offset = None, 0
    tensorboard = history.TensorBoard(os.path.join(workdir, "tensorboard"))
    with StopRequests() as stop, contextlib.closing(tensorboard):
        for index, stage in enumerate(STAGES):
            resumes_later = resume is not None and STAGES.index(resume.meta["stage"]) > index
            if resumes_later or config[stage].epochs <= 0:
                epoch_offset += config[stage].epochs
                continue
            if variables is None:  # the first stage to run: the previous stage's best when resuming
                resumed = index > 0 and resume is not None
                variables = (
                    checkpoints.best_variables(workdir, STAGES[index - 1])
                    if resumed
                    else initial_variables(config, num_classes)
                )
            context = StageRun(config, workdir, data, mesh, stop, tensorboard, latest, records, epoch_offset)
            variables = run_stage(context, stage, variables, resume if _resumes(resume, stage) else None)
            epoch_offset += config[stage].epochs
            resume = None
    history.write_history(workdir, records, curves=True)
    calibrate(config, workdir)
    return evaluate(config, workdir)


def _resumes(resume: checkpoints.Restored | None, stage: str) -> bool:
    return resume is not None and resume.meta["stage"] == stage


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> RunData:
    """Prepares (or reuses) the data, writes the run files, derives class weights and steps per epoch, and
    decodes the training images into memory when ``config.data.in_memory`` says so."""
    prepared = parallel.primary_first(lambda: builder.prepare(config.data, workdir))
    if parallel.is_primary():
        run_files.write_run_files(workdir, config, prepared.classes)
    parallel.barrier("run_files")
    counts = prepared.counts["train"]
    weights = pipeline.class_weights(counts) if config.class_weights else np.ones(len(counts), np.float32)
    logging.info("Class weights: %s", dict(zip(prepared.classes, np.round(weights, 4).tolist(), strict=True)))
    steps = pipeline.steps_per_epoch(prepared, config)
    if steps == 0:
        raise ValueError(
            f"training split has {sum(counts)} images, fewer than one batch of {config.batch_size}; "
            "lower --config.batch_size"
        )
    memory = None
    if pipeline.in_memory(prepared, config, jax.process_count()):
        memory = pipeline.load_in_memory(prepared, config, jax.process_index(), jax.process_count())
        logging.info(
            "Training images held in memory: %s uint8, %.2f GiB",
            memory.images.shape,
            memory.images.nbytes / 2**30,
        )
    return RunData(prepared=prepared, class_weights=weights, steps=steps, memory=memory)


def restore_run(
    config: ml_collections.ConfigDict, latest: ocp.CheckpointManager, num_classes: int, mesh: Mesh
) -> checkpoints.Restored | None:
    """The newest intact resumable checkpoint in ``latest``, restored onto ``mesh`` (None: start afresh)."""
    return checkpoints.restore_latest(
        latest,
        lambda meta, version: restore_target(config, num_classes, meta["stage"], mesh, version),
    )


@dataclasses.dataclass
class StageRun:
    """What every stage of a run shares."""

    config: ml_collections.ConfigDict
    workdir: str
    data: RunData
    mesh: Mesh
    stop: StopRequests
    tensorboard: history.TensorBoard
    latest: ocp.CheckpointManager  # the resumable states
    records: dict[str, list[dict[str, Any]]]  # the run's history, per stage
    epoch_offset: int  # epochs of the stages before this one (checkpoints count global steps)


def run_stage(
    run: StageRun, name: str, variables: dict[str, Any], resume: checkpoints.Restored | None
) -> dict[str, Any]:
    """Trains stage ``name`` from ``variables`` (or from ``resume``); returns its best variables."""
    config = run.config
    stage = setup_stage(config, variables, name, len(run.data.prepared.classes), run.mesh)
    console.say(f"{name}: up to {config[name].epochs} epochs, {stage.trains}")
    stage, train_batches, validator, val_batches = _stage_inputs(run, stage, variables)
    state, progress, position = _starting_point(stage, config[name], resume)
    records = run.records.setdefault(name, [])
    guard = StageGuard(
        stage=name,
        epoch_offset=run.epoch_offset,
        steps=run.data.steps,
        progress=progress,
        history=run.records,
        latest=run.latest,
        best=checkpoints.best_manager(run.workdir, name),
        stop=run.stop,
        timer=SaveTimer(config.checkpoint_every_minutes),
        max_nonfinite_steps=config.max_nonfinite_steps,
    )
    while progress.epochs_done < config[name].epochs and not progress.stopped_early:
        state = _run_epoch(run, stage, state, position, guard, train_batches, (validator, val_batches))
        position = EpochPosition()
    logging.info("%s", history.stage_table(name, records, progress))
    feature_cache.remove(run.workdir)
    return checkpoints.best_variables(run.workdir, name)


def _stage_inputs(
    run: StageRun, stage: Stage, variables: dict[str, Any]
) -> tuple[Stage, Callable[[int], Iterator], Stage, Callable[[], Iterator]]:
    """The stage as it trains and its training batches of an epoch, the stage as it validates and its
    validation batches: on activations cached at the gradient boundary where the feature-cache plan says
    so, else on images through the input pipeline."""
    config, prepared = run.config, run.data.prepared
    plan = feature_cache.plan(config, stage.boundary)
    logging.info("%s: feature cache: validation %s; training: %s", stage.name, plan.validation, plan.reason)
    if plan.approximate:  # never silently
        console.say(f"{stage.name}: {plan.reason}")
    process = (jax.process_index(), jax.process_count())

    def train_batches(epoch: int) -> Iterator:
        return pipeline.train_batches(prepared, config, epoch, *process, memory=run.data.memory)

    if not plan.validation:
        val_batches = functools.partial(pipeline.eval_batches, prepared, "validation", config, *process)
        return stage, train_batches, stage, val_batches
    trainer, cached_train, validator, val_batches = feature_cache.cached_inputs(
        config, stage, variables, prepared, run.workdir, plan
    )
    return trainer, cached_train or train_batches, validator, val_batches


def _starting_point(
    stage: Stage, stage_config: ml_collections.ConfigDict, resume: checkpoints.Restored | None
) -> tuple[TrainState, StageProgress, EpochPosition]:
    """Where a stage starts: its fresh state, or the state, progress and epoch position of ``resume``."""
    if resume is None:
        return (
            stage.state,
            StageProgress(epochs_done=0, learning_rate=stage_config.learning_rate),
            EpochPosition(),
        )
    progress = StageProgress(**resume.meta["progress"])
    position = EpochPosition(**resume.meta.get("position", {}))
    restored = upgrade_state(resume.state, resume.format_version, progress.learning_rate, stage)
    logging.info(
        "Resuming %s at epoch %d step %d (checkpoint %d)",
        stage.name,
        progress.epochs_done + 1,
        position.step,
        resume.step,
    )
    return stage.state.replace(**restored), progress, position


def _run_epoch(
    run: StageRun,
    stage: Stage,
    state: TrainState,
    position: EpochPosition,
    guard: StageGuard,
    train_batches: Callable[[int], Iterator],
    validation: tuple[Stage, Callable[[], Iterator]],
) -> TrainState:
    """Trains one epoch (from ``position`` on), validates, records and checkpoints it; returns the state."""
    start = time.perf_counter()
    config, progress, name = run.config, guard.progress, stage.name
    epochs = config[name].epochs
    epoch = progress.epochs_done + 1
    global_epoch = run.epoch_offset + epoch
    state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, progress.learning_rate))
    batches = map(functools.partial(parallel.shard_batch, run.mesh), train_batches(global_epoch))
    with contextlib.closing(
        history.EpochBar(name, epoch, epochs, run.data.steps, config, position.step)
    ) as bar:
        state, train_metrics = _train_epoch(state, stage, batches, position, run, bar, guard)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    validator, val_batches = validation
    val = predict_split(validator.model, variables, val_batches(), validator.preprocessing, run.mesh)
    record = {
        "epoch": epoch,
        **{k: train_metrics[k] for k in ("loss", "accuracy")},
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "lr": progress.learning_rate,
        "images_per_s": train_metrics["images_per_s"],
        "seconds": time.perf_counter() - start,  # the epoch's wall time here: training and validation
    }
    run.records[name].append(record)
    improved = update_progress(progress, record[config.early_stopping.metric], config, epochs)
    if improved:
        checkpoints.save(guard.best, global_epoch, variables, {"stage": name, "epoch": epoch, **record})
    console.say(_epoch_line(name, epochs, record, improved))
    run.tensorboard.scalars(global_epoch, {f"{name}/{k}": v for k, v in record.items() if k != "epoch"})
    guard.save(state, EpochPosition(), epoch + 1)
    history.write_history(run.workdir, run.records)
    guard.raise_if_stop_requested(f"{name} epoch {epoch} is saved")
    return state


def _epoch_line(stage: str, epochs: int, record: dict[str, Any], improved: bool) -> str:
    """The console's summary line of an epoch."""
    return (
        f"{stage} epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f} acc {record['accuracy']:.4f} | "
        f"val_loss {record['val_loss']:.4f} val_acc {record['val_accuracy']:.4f} | lr {record['lr']:.2e} | "
        f"{record['images_per_s']:.1f} img/s{' (best)' if improved else ''}"
    )


def _train_epoch(
    state: TrainState,
    stage: Stage,
    batches: Iterator[dict[str, jax.Array]],
    position: EpochPosition,
    run: StageRun,
    bar: history.EpochBar,
    guard: StageGuard,
) -> tuple[TrainState, dict[str, float]]:
    """Runs an epoch's train steps from ``position`` on; returns the state, mean loss/accuracy, img/s.

    The guard runs after every step (checkpoints, stop requests); steps with a non-finite loss are left out
    of the means.
    """
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(run.config.seed), STAGES.index(stage.name))
    start, count_at_start = time.perf_counter(), position.totals["count"]
    class_weights = jnp.asarray(run.data.class_weights)
    for batch in itertools.islice(batches, position.step, None):
        state, metrics = stage.step(state, batch, dropout_key, class_weights)
        metrics = jax.device_get(metrics)
        position.step += 1
        if metrics["finite"]:
            for key in position.totals:
                position.totals[key] += float(metrics[key])
        bar.step(position.step, position.totals)
        guard.after_step(state, position, bool(metrics["finite"]))
    seconds = time.perf_counter() - start
    count = max(position.totals["count"], 1.0)
    return state, {
        "loss": position.totals["loss"] / count,
        "accuracy": position.totals["correct"] / count,
        "images_per_s": (position.totals["count"] - count_at_start) / max(seconds, 1e-9),
    }
