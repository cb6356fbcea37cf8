"""Two-stage transfer learning: frozen backbone, then a fine-tuned tail.

Each stage trains the parameters its config's ``trainable`` rules select with
Adam, stops gradients in front of the first trainable backbone block (frozen
layers cost no backward pass), keeps BatchNorm frozen, and applies early
stopping and reduce-LR-on-plateau on the validation split. The latest state is
checkpointed every epoch, so re-running on the same workdir resumes.
"""

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state

from scenecls import (
    checkpoints,
    console,
    evaluate,
    feature_cache,
    freeze,
    parallel,
    plots,
    pretrained,
    run_control,
    summaries,
)
from scenecls.data import builder, pipeline
from scenecls.models import block_names, build_classifier
from scenecls.preprocessing import mode_for_variant, preprocess


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics."""

    batch_stats: Any


@dataclasses.dataclass
class StageProgress:
    """Where a stage stands: epochs done, learning rate and plateau bookkeeping (JSON-able)."""

    epochs_done: int
    learning_rate: float
    best: float | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    epochs_since_lr_change: int = 0
    stopped_early: bool = False
    nonfinite_steps: int = 0


@dataclasses.dataclass
class EpochPosition:
    """Steps done in the current epoch and their summed metrics (kept in mid-epoch checkpoints)."""

    step: int = 0
    totals: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"loss": 0.0, "correct": 0.0, "count": 0.0}
    )


def weighted_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """Mean over the batch of ``weight[label] * softmax cross-entropy`` (Keras' class_weight)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.mean(weights[labels] * losses)


def make_optimizer(labels: Any) -> optax.GradientTransformation:
    """Adam directions for trainable leaves, no update (and no state) for frozen ones.

    The learning rate is applied in ``train_step`` so plateau reductions need no
    new optimizer state and no recompilation. Epsilon 1e-7 as in Keras.
    """
    return optax.partition(
        {freeze.TRAINABLE: optax.scale_by_adam(eps=1e-7), freeze.FROZEN: optax.set_to_zero()}, labels
    )


def create_train_state(model: nn.Module, variables: dict[str, Any], labels: Any) -> TrainState:
    """A fresh TrainState for ``model`` whose optimizer trains the leaves labelled trainable."""
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=make_optimizer(labels),
        batch_stats=variables["batch_stats"],
    )


def train_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    learning_rate: jnp.ndarray,
    dropout_key: jax.Array,
    class_weights: jnp.ndarray,
    *,
    preprocess_mode: str,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimisation step; returns the new state and summed batch metrics.

    Only the BatchNorm layers the model was built to train (``trainable_batchnorm``) change their
    statistics; the others normalise with their running averages. A step whose loss or updated parameters
    are not finite leaves parameters, optimizer and BatchNorm state unchanged and reports ``finite=False``
    (the caller decides whether to stop).
    """
    images = preprocess(batch["image"], preprocess_mode)
    labels = batch["label"]
    key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        return weighted_cross_entropy(logits, labels, class_weights), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    directions, opt_state = state.tx.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda d: -learning_rate * d, directions)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)])
    )
    keep_if_finite = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        batch_stats=keep_if_finite(batch_stats, state.batch_stats),
    )
    count = labels.shape[0]
    metrics = {
        "loss": loss * count,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
        "count": jnp.asarray(count),
        "finite": finite,
    }
    return new_state, metrics


def update_progress(
    progress: StageProgress, value: float, config: ml_collections.ConfigDict, max_epochs: int
) -> bool:
    """Advances plateau bookkeeping after an epoch; returns True when ``value`` is a new best.

    Early stopping and the LR reduction follow Keras' EarlyStopping and
    ReduceLROnPlateau (no min_delta, no cooldown).
    """
    sign = -1.0 if config.early_stopping.metric == "val_loss" else 1.0
    progress.epochs_done += 1
    improved = progress.best is None or sign * value > sign * progress.best
    if improved:
        progress.best, progress.best_epoch = value, progress.epochs_done
        progress.epochs_without_improvement = progress.epochs_since_lr_change = 0
    else:
        progress.epochs_without_improvement += 1
        progress.epochs_since_lr_change += 1
        if progress.epochs_since_lr_change >= config.reduce_lr.patience:
            new_lr = max(progress.learning_rate * config.reduce_lr.factor, config.reduce_lr.min_lr)
            if new_lr < progress.learning_rate:
                logging.info("Reducing learning rate %.3g -> %.3g", progress.learning_rate, new_lr)
            progress.learning_rate, progress.epochs_since_lr_change = new_lr, 0
        if (
            progress.epochs_without_improvement >= config.early_stopping.patience
            and progress.epochs_done < max_epochs
        ):
            logging.info(
                "Early stopping: no %s improvement for %d epochs",
                config.early_stopping.metric,
                progress.epochs_without_improvement,
            )
            progress.stopped_early = True
    return improved


def stage_labels(variables: dict[str, Any], stage_config: ml_collections.ConfigDict) -> Any:
    """TRAINABLE/FROZEN per parameter for a stage (its ``trainable`` rules and ``train_batchnorm``)."""
    return freeze.param_labels(
        variables["params"],
        variables["batch_stats"],
        stage_config.trainable,
        stage_config.train_batchnorm,
    )


def _init_variables(model: nn.Module, image_size: int, key: jax.Array) -> dict[str, Any]:
    """Fresh variables of ``model`` for ``image_size`` inputs."""
    return model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))


def initial_variables(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """Initialised classifier variables, with the pretrained backbone merged in when configured."""
    model = build_classifier(config.model, num_classes)
    variables = jax.jit(functools.partial(_init_variables, model, config.image_size))(
        jax.random.PRNGKey(config.seed)
    )
    variables = jax.device_get(dict(variables))
    if config.pretrained in ("", "none"):
        logging.warning(
            "No pretrained weights (config.pretrained='none'): the backbone starts from random init."
        )
        return variables
    weights_variant = pretrained.weights_variant(config.pretrained)
    if weights_variant != config.model.variant:
        raise ValueError(
            f"{config.pretrained}: weights are for the {weights_variant!r} ResNet variant but "
            f"config.model.variant={config.model.variant!r}; set --config.model.variant={weights_variant}"
        )
    return pretrained.merge_backbone(variables, pretrained.load_backbone(config.pretrained))


class _EpochProgress:
    """An epoch's progress bar (loss, accuracy, images/s, ETA) and periodic lines in the log."""

    def __init__(
        self, stage: str, epoch: int, epochs: int, steps: int, batch_size: int, every: int, done: int
    ):
        self.stage, self.epoch, self.epochs, self.steps = stage, epoch, epochs, steps
        self.batch_size, self.every = batch_size, max(every, 1)
        self.start, self.done_at_start = time.perf_counter(), done
        self.bar = console.progress(
            total=steps, initial=done, desc=f"{stage} epoch {epoch}/{epochs}", unit="step", leave=False
        )

    def step(self, step: int, totals: dict[str, float]) -> None:
        """Reports the epoch's ``step``-th step done, with the running sums ``totals``."""
        elapsed = time.perf_counter() - self.start
        rate = (step - self.done_at_start) * self.batch_size / max(elapsed, 1e-9)
        loss = totals["loss"] / max(totals["count"], 1.0)
        accuracy = totals["correct"] / max(totals["count"], 1.0)
        self.bar.set_postfix_str(f"loss {loss:.4f} acc {accuracy:.4f} {rate:.1f} img/s", refresh=False)
        self.bar.update()
        if step == self.steps:
            self.bar.refresh()  # the bar is cleared when the epoch ends: show it complete first
        if step % self.every and step != self.steps:
            return
        eta = (self.steps - step) * self.batch_size / max(rate, 1e-9)
        logging.info(
            "%s epoch %d/%d step %d/%d: loss %.4f acc %.4f, %.1f img/s, ETA %.0fs",
            self.stage,
            self.epoch,
            self.epochs,
            step,
            self.steps,
            loss,
            accuracy,
            rate,
            eta,
        )

    def close(self) -> None:
        self.bar.close()


def _train_epoch(
    state: TrainState,
    step_fn: Callable,
    batches: Iterator[dict[str, np.ndarray]],
    position: EpochPosition,
    learning_rate: float,
    dropout_key: jax.Array,
    class_weights: jnp.ndarray,
    logger: _EpochProgress,
    after_step: Callable[[TrainState, EpochPosition, bool], None],
) -> tuple[TrainState, dict[str, float]]:
    """Runs an epoch's train steps from ``position`` on; returns the state, mean loss/accuracy, img/s.

    ``after_step(state, position, finite)`` runs after every step (checkpoints, stop requests); steps with
    a non-finite loss are left out of the means.
    """
    start, count_at_start = time.perf_counter(), position.totals["count"]
    lr = jnp.asarray(learning_rate, jnp.float32)
    for batch in itertools.islice(batches, position.step, None):
        state, metrics = step_fn(state, batch, lr, dropout_key, class_weights)
        metrics = jax.device_get(metrics)
        position.step += 1
        if metrics["finite"]:
            for key in position.totals:
                position.totals[key] += float(metrics[key])
        logger.step(position.step, position.totals)
        after_step(state, position, bool(metrics["finite"]))
    seconds = time.perf_counter() - start
    count = max(position.totals["count"], 1.0)
    return state, {
        "loss": position.totals["loss"] / count,
        "accuracy": position.totals["correct"] / count,
        "images_per_s": (position.totals["count"] - count_at_start) / max(seconds, 1e-9),
    }


def _stage_summary(stage: str, records: list[dict[str, Any]], progress: StageProgress) -> str:
    """A table of a stage's epochs for the log."""
    stopped = ", stopped early" if progress.stopped_early else ""
    lines = [
        f"{stage} summary (best epoch {progress.best_epoch}{stopped}):",
        f"{'epoch':>5} {'loss':>8} {'acc':>7} {'val_loss':>9} {'val_acc':>8} {'lr':>9} {'img/s':>7}",
    ]
    lines += [
        f"{r['epoch']:>5} {r['loss']:>8.4f} {r['accuracy']:>7.4f} {r['val_loss']:>9.4f} "
        f"{r['val_accuracy']:>8.4f} {r['lr']:>9.2e} {r['images_per_s']:>7.1f}"
        for r in records
    ]
    return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Prepares data, trains both stages (resuming if possible), evaluates on the test split.

    Returns the test metrics (also written to ``<workdir>/eval/metrics.json``).
    """
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.create_mesh()
    parallel.check_divisible(config.batch_size, "batch_size", mesh)
    parallel.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
    prepared = parallel.primary_first(lambda: builder.prepare(config.data, workdir))
    classes = prepared.classes
    if parallel.is_primary():
        checkpoints.write_run_files(workdir, config, classes)
    parallel.barrier("run_files")
    num_classes = len(classes)
    mode = mode_for_variant(config.model.variant)
    weights = (
        pipeline.class_weights(prepared.counts["train"])
        if config.class_weights
        else np.ones((num_classes,), np.float32)
    )
    logging.info("Class weights: %s", dict(zip(classes, np.round(weights, 4).tolist(), strict=False)))
    class_weights = jnp.asarray(weights)
    steps = pipeline.steps_per_epoch(prepared, config)
    if steps == 0:
        raise ValueError(
            f"training split has {sum(prepared.counts['train'])} images, fewer than one batch of "
            f"{config.batch_size}; lower --config.batch_size"
        )

    latest = checkpoints.latest_manager(workdir)
    resume = checkpoints.restore_latest(
        latest,
        lambda meta: parallel.with_sharding(
            _state_tree(_abstract_state(config, num_classes, meta["stage"])), parallel.replicated(mesh)
        ),
    )
    history: dict[str, list[dict[str, Any]]] = resume.meta["history"] if resume else {}
    writer = summaries.SummaryWriter(os.path.join(workdir, "tensorboard")) if parallel.is_primary() else None
    variables = None
    epoch_offset = 0
    with run_control.StopRequests() as stop:
        for stage_index, stage in enumerate(checkpoints.STAGES):
            stage_config = config[stage]
            if resume and checkpoints.STAGES.index(resume.meta["stage"]) > stage_index:
                epoch_offset += stage_config.epochs
                continue
            if stage_config.epochs <= 0:
                continue
            if variables is None:
                variables = (
                    _best_variables(workdir, checkpoints.STAGES[stage_index - 1])
                    if stage_index > 0 and resume
                    else initial_variables(config, num_classes)
                )
            labels = stage_labels(variables, stage_config)
            trains = freeze.log_trainable(stage, labels, variables["params"])
            boundary = freeze.gradient_boundary(labels, block_names(config.model.stage_sizes))
            logging.info("%s: gradients stop at %s", stage, boundary or "nothing (full backprop)")
            console.say(f"{stage}: up to {stage_config.epochs} epochs, {trains}")
            model = build_classifier(
                config.model,
                num_classes,
                gradient_boundary=boundary,
                trainable_batchnorm=freeze.trainable_batchnorm(labels, variables["batch_stats"]),
            )
            train_batches, val_batches, model_inputs = _stage_inputs(
                config, stage, boundary, model, variables, prepared, mode, workdir
            )
            state = parallel.replicate(mesh, create_train_state(model_inputs.model, variables, labels))
            progress = StageProgress(epochs_done=0, learning_rate=stage_config.learning_rate)
            position = EpochPosition()
            if resume and resume.meta["stage"] == stage:
                state = state.replace(**resume.state)
                progress = StageProgress(**resume.meta["progress"])
                position = EpochPosition(**resume.meta.get("position", {}))
                logging.info(
                    "Resuming %s at epoch %d step %d (checkpoint %d)",
                    stage,
                    progress.epochs_done + 1,
                    position.step,
                    resume.step,
                )
            records = history.setdefault(stage, [])
            step_fn = jax.jit(
                functools.partial(
                    train_step,
                    preprocess_mode=model_inputs.preprocess_mode,
                ),
                donate_argnums=0,
                out_shardings=parallel.replicated(mesh),
            )
            dropout_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), stage_index)
            best = checkpoints.best_manager(workdir, stage)
            guard = _StageGuard(
                stage=stage,
                epoch_offset=epoch_offset,
                steps=steps,
                progress=progress,
                history=history,
                latest=latest,
                stop=stop,
                timer=run_control.SaveTimer(config.checkpoint_every_minutes),
                max_nonfinite_steps=config.max_nonfinite_steps,
            )
            while progress.epochs_done < stage_config.epochs and not progress.stopped_early:
                epoch = progress.epochs_done + 1
                global_epoch = epoch_offset + epoch
                logger = _EpochProgress(
                    stage,
                    epoch,
                    stage_config.epochs,
                    steps,
                    config.batch_size,
                    config.log_every_steps,
                    position.step,
                )
                learning_rate = progress.learning_rate
                with contextlib.closing(logger):
                    state, train_metrics = _train_epoch(
                        state,
                        step_fn,
                        map(functools.partial(parallel.shard_batch, mesh), train_batches(global_epoch)),
                        position,
                        learning_rate,
                        dropout_key,
                        class_weights,
                        logger,
                        guard.after_step,
                    )
                eval_variables = {"params": state.params, "batch_stats": state.batch_stats}
                val = evaluate.predict_split(
                    model_inputs.model, eval_variables, val_batches(), model_inputs.preprocess_mode, mesh
                )
                record = {
                    "epoch": epoch,
                    **{k: train_metrics[k] for k in ("loss", "accuracy")},
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "lr": learning_rate,
                    "images_per_s": train_metrics["images_per_s"],
                }
                records.append(record)
                monitored = record[config.early_stopping.metric]
                improved = update_progress(progress, monitored, config, stage_config.epochs)
                if improved:
                    checkpoints.save(
                        best, global_epoch, eval_variables, {"stage": stage, "epoch": epoch, **record}
                    )
                console.say(
                    f"{stage} epoch {epoch}/{stage_config.epochs}: loss {record['loss']:.4f} "
                    f"acc {record['accuracy']:.4f} | val_loss {record['val_loss']:.4f} "
                    f"val_acc {record['val_accuracy']:.4f} | lr {learning_rate:.2e} | "
                    f"{record['images_per_s']:.1f} img/s{' (best)' if improved else ''}"
                )
                if writer:
                    writer.scalars(
                        global_epoch, {f"{stage}/{k}": v for k, v in record.items() if k != "epoch"}
                    )
                position = EpochPosition()
                guard.save(state, position, epoch + 1)
                if parallel.is_primary():
                    _write_history(workdir, history)
                guard.raise_if_stop_requested(f"{stage} epoch {epoch} is saved")
            logging.info("%s", _stage_summary(stage, records, progress))
            feature_cache.remove(_cache_dir(workdir))
            variables = _best_variables(workdir, stage)
            epoch_offset += stage_config.epochs
            resume = None
    if parallel.is_primary():
        writer.close()
        _write_history(workdir, history)
        plots.plot_curves(history, os.path.join(workdir, "curves.png"))
    return evaluate.evaluate(config, workdir)


@dataclasses.dataclass
class _StageGuard:
    """Keeps a stage's work safe: resumable checkpoints (per epoch, every few minutes, on SIGINT/SIGTERM)
    and the stop on non-finite losses."""

    stage: str
    epoch_offset: int
    steps: int
    progress: StageProgress
    history: dict[str, list[dict[str, Any]]]
    latest: ocp.CheckpointManager
    stop: run_control.StopRequests
    timer: run_control.SaveTimer
    max_nonfinite_steps: int

    def save(self, state: TrainState, position: EpochPosition, epoch: int) -> None:
        """Checkpoints the state at ``position`` of stage epoch ``epoch``, numbered by global step."""
        checkpoints.save(
            self.latest,
            (self.epoch_offset + epoch - 1) * self.steps + position.step,
            _state_tree(state),
            {
                "stage": self.stage,
                "progress": dataclasses.asdict(self.progress),
                "position": dataclasses.asdict(position),
                "history": self.history,
            },
        )
        self.timer.reset()

    def raise_if_stop_requested(self, saved: str) -> None:
        """Ends the run with Interrupted when a signal arrived (after ``saved`` was checkpointed)."""
        if self.stop.signum is not None:
            raise run_control.Interrupted(
                f"interrupted by {signal.Signals(self.stop.signum).name}: {saved} in "
                f"{self.latest.directory}; run the same command again to resume",
                self.stop.signum,
            )

    def after_step(self, state: TrainState, position: EpochPosition, finite: bool) -> None:
        """Within an epoch: counts non-finite steps, saves when due or asked to stop."""
        epoch = self.progress.epochs_done + 1
        where = f"{self.stage} epoch {epoch} step {position.step}/{self.steps}"
        if not finite:
            self.progress.nonfinite_steps += 1
            logging.warning("Non-finite loss at %s: update skipped", where)
            if self.progress.nonfinite_steps > self.max_nonfinite_steps:
                kept = self.latest.latest_step()
                advice = "lower the learning rate or check the data"
                raise run_control.NonFiniteLoss(
                    f"non-finite loss at {where} ({self.progress.nonfinite_steps} such steps, "
                    f"config.max_nonfinite_steps={self.max_nonfinite_steps}); training stopped. "
                    + (
                        f"The last good checkpoint ({self.latest.directory}/{kept}) is kept: {advice}, "
                        "then rerun to resume from it"
                        if kept is not None
                        else f"No checkpoint was written yet: {advice}"
                    )
                )
        if self.stop.signum is not None:
            self.save(state, position, epoch)
            self.raise_if_stop_requested(f"{where} is saved")
        if self.timer.due() and position.step < self.steps:
            self.save(state, position, epoch)


class _ModelInputs(NamedTuple):
    """The model a stage trains and how its inputs are preprocessed (images, or cached features)."""

    model: nn.Module
    preprocess_mode: str


def _cache_dir(workdir: str) -> str:
    return os.path.join(workdir, "feature_cache")


def _stage_inputs(
    config: ml_collections.ConfigDict,
    stage: str,
    boundary: str | None,
    model: nn.Module,
    variables: dict[str, Any],
    prepared: builder.PreparedData,
    mode: str,
    workdir: str,
) -> tuple[Callable[[int], Iterator], Callable[[], Iterator], _ModelInputs]:
    """A stage's training batches (per epoch), validation batches and model: cached features when exact."""
    reason = feature_cache.unusable_reason(config, stage, boundary) or (
        "a multi-process run" if jax.process_count() > 1 else None
    )
    if reason:
        logging.info("%s: training on images (no feature cache: %s)", stage, reason)
        process = (jax.process_index(), jax.process_count())
        return (
            lambda epoch: pipeline.train_batches(prepared, config, epoch, *process),
            lambda: pipeline.eval_batches(prepared, "validation", config, *process),
            _ModelInputs(model, mode),
        )
    logging.info("%s: frozen backbone and no augmentation, caching its features once", stage)
    cached = {
        split: feature_cache.cache_split(model, variables, prepared, split, config, mode, _cache_dir(workdir))
        for split in ("train", "validation")
    }
    return (
        lambda epoch: feature_cache.train_batches(cached["train"], prepared, config, epoch),
        lambda: feature_cache.eval_batches(cached["validation"], config.eval_batch_size),
        _ModelInputs(model.clone(inputs="features"), feature_cache.FEATURE_MODE),
    )


def _state_tree(state: TrainState) -> dict[str, Any]:
    """The checkpointed part of a TrainState (functions and optimizer definition excluded)."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


def _abstract_state(config: ml_collections.ConfigDict, num_classes: int, stage: str) -> TrainState:
    """Shapes and dtypes of a stage's TrainState (no computation): the target a checkpoint restores into."""
    model = build_classifier(config.model, num_classes)

    def create() -> TrainState:
        variables = _init_variables(model, config.image_size, jax.random.PRNGKey(0))
        return create_train_state(model, variables, stage_labels(variables, config[stage]))

    return jax.eval_shape(create)


def _best_variables(workdir: str, stage: str) -> dict[str, Any]:
    """The best params and batch_stats of a finished stage."""
    manager = checkpoints.best_manager(workdir, stage)
    return jax.device_get(checkpoints.restore_state(manager, manager.latest_step()))


def _write_history(workdir: str, history: dict[str, list[dict[str, Any]]]) -> None:
    with open(os.path.join(workdir, "history.json"), "w") as f:
        json.dump(history, f, indent=2)
