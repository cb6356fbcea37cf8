"""The reference's Keras/TensorFlow model and training, measured for ``experiments/benchmark.py``.

A faithful peer of the reference repository (SPEC.md): ``keras.applications.ResNet50(include_top=False,
weights=None)`` (random weights cost the same as ImageNet ones) + the Inception head (parallel 'same' 1x1,
3x3 and 5x5 convs of 128 filters, ReLU, concat, global average pool, dropout 0.5, dense softmax), Adam 1e-5,
categorical cross-entropy, pixels scaled by 1/255. Stage 1 freezes the ResNet; stage 2 makes the model's
last 30 layers trainable, BatchNorm included, as the reference does. Evaluation is ``model.predict``;
patch inference is one ``model.predict`` per 224 px patch in a Python loop, dropping partial patches.

Run by the benchmark in its own process (so peak memory is Keras' own):
``python experiments/keras_peer.py --job speed|fit --plan PLAN.json --result OUT.json``.
"""

import argparse
import json
import os
import resource
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 (tf_keras), the reference's API

import numpy as np
import tensorflow as tf
import tf_keras as keras

tf.config.set_visible_devices([], "GPU")

# Layers the reference unfreezes in stage 2, counted from the model's end.
STAGE2_TRAINABLE_LAYERS = 30
HEAD_LAYERS = 7  # 3 convs, concatenate, pooling, dropout, dense
AUGMENTATION = {  # the reference's ImageDataGenerator arguments (training only)
    "rotation_range": 10,
    "width_shift_range": 0.05,
    "height_shift_range": 0.05,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "fill_mode": "nearest",
}


def build_model(num_classes: int, image_size: int) -> keras.Model:
    """ResNet50 (no top, random weights) + Inception head, as one flat functional model."""
    base = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    branches = [
        keras.layers.Conv2D(128, kernel, padding="same", activation="relu")(base.output)
        for kernel in (1, 3, 5)
    ]
    x = keras.layers.Concatenate()(branches)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(base.input, outputs)


def set_stage(model: keras.Model, stage: str) -> None:
    """Freezes like the reference (stage1: the ResNet; stage2: all but the last 30 layers) and compiles."""
    trainable = HEAD_LAYERS if stage == "stage1" else STAGE2_TRAINABLE_LAYERS
    frozen = len(model.layers) - trainable
    for index, layer in enumerate(model.layers):
        layer.trainable = index >= frozen
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-5),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def _scaled(images: np.ndarray) -> np.ndarray:
    """The reference's preprocessing: float pixels / 255."""
    return images.astype(np.float32) / 255.0


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call; Keras returns numpy, so the work is done when it returns."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def _patch_crops(image: np.ndarray, size: int, stride: int) -> list[np.ndarray]:
    """The reference's patches: whole windows only (partial ones at the right/bottom edges dropped)."""
    height, width = image.shape[:2]
    return [
        image[y : y + size, x : x + size]
        for y in range(0, height - size + 1, stride)
        for x in range(0, width - size + 1, stride)
    ]


def speed(plan: dict) -> dict:
    """Time to first step, stage-1/2 step rates, augmented stage 1, predict and the per-patch loop."""
    data = np.load(plan["data"])
    size, batch_size, steps = plan["image_size"], plan["batch_size"], plan["steps"]
    num_classes = int(data["num_classes"])
    images = _scaled(data["train_x"][:batch_size])
    onehot = keras.utils.to_categorical(data["train_y"][:batch_size], num_classes)
    results = {}

    start = time.perf_counter()
    model = build_model(num_classes, size)
    set_stage(model, "stage1")
    model.train_on_batch(images, onehot)
    results["first_step_s"] = time.perf_counter() - start

    seconds, _ = _timed(lambda: [model.train_on_batch(images, onehot) for _ in range(steps)])
    results["stage1_step_img_s"] = steps * batch_size / seconds

    # Augmented stage 1 as the reference feeds it: ImageDataGenerator batches through fit (one worker
    # thread prepares the next batch while the step runs). Arrays in memory: no JPEG decoding. The step is
    # already traced (train_on_batch and fit share it), so no warm-up, as for scenecls.
    generator = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255, **AUGMENTATION)
    train_y = keras.utils.to_categorical(data["train_y"], num_classes)
    flow = generator.flow(data["train_x"].astype(np.float32), train_y, batch_size=batch_size, seed=0)
    aug_steps = len(data["train_y"]) // batch_size
    seconds, _ = _timed(model.fit, flow, steps_per_epoch=aug_steps, epochs=1, verbose=0)
    results["stage1_augmented_img_s"] = aug_steps * batch_size / seconds

    eval_images = _scaled(np.resize(data["train_x"], (plan["eval_images"], size, size, 3)))
    eval_batch = plan["eval_batch_size"]
    model.predict(eval_images[:eval_batch], batch_size=eval_batch, verbose=0)  # warm-up
    seconds, _ = _timed(model.predict, eval_images, batch_size=eval_batch, verbose=0)
    results["eval_img_s"] = len(eval_images) / seconds

    crops = _patch_crops(np.load(plan["patch_image"]), plan["patch_size"], plan["patch_stride"])
    looped = crops[: plan["loop_patches"]]
    model.predict(_scaled(looped[0][None]), verbose=0)  # warm-up
    seconds, _ = _timed(lambda: [model.predict(_scaled(crop[None]), verbose=0) for crop in looped])
    results["patch_loop_patches_s"] = len(looped) / seconds
    results["patch_loop_grid"] = len(crops)

    set_stage(model, "stage2")
    model.train_on_batch(images, onehot)  # warm-up (retrace after the trainable change)
    seconds, _ = _timed(lambda: [model.train_on_batch(images, onehot) for _ in range(steps)])
    results["stage2_step_img_s"] = steps * batch_size / seconds
    return results


def fit(plan: dict) -> dict:
    """Stage 1 end to end: build, compile and ``fit`` for ``epochs`` with validation each epoch."""
    data = np.load(plan["data"])
    num_classes = int(data["num_classes"])
    train_x, val_x = _scaled(data["train_x"]), _scaled(data["val_x"])
    train_y = keras.utils.to_categorical(data["train_y"], num_classes)
    val_y = keras.utils.to_categorical(data["val_y"], num_classes)
    class_weight = dict(enumerate(data["class_weights"].tolist()))
    start = time.perf_counter()
    model = build_model(num_classes, plan["image_size"])
    set_stage(model, "stage1")
    history = model.fit(
        train_x,
        train_y,
        batch_size=plan["batch_size"],
        epochs=plan["epochs"],
        validation_data=(val_x, val_y),
        class_weight=class_weight,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {"stage1_fit_s": seconds, "epochs_run": len(history.history["loss"])}


class _EpochTimes(keras.callbacks.Callback):
    """Wall time of every epoch of a ``fit`` (training and validation)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def recipe(plan: dict) -> dict:
    """The paper's recipe end to end as the reference runs it: stage 1 (head), stage 2 (last 30 layers),
    ImageDataGenerator augmentation, class weights, validation every epoch with the reference's callbacks
    (best-model checkpoint, reduce-LR-on-plateau; early stopping beyond the epochs, so every epoch runs),
    then the test split."""
    data = np.load(plan["data"])
    num_classes = len(data["class_weights"])
    onehot = {
        s: keras.utils.to_categorical(data[f"{s}_y"], num_classes) for s in ("train", "validation", "test")
    }
    class_weight = dict(enumerate(data["class_weights"].tolist()))
    generator = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255, **AUGMENTATION)
    start = time.perf_counter()
    model = build_model(num_classes, plan["image_size"])
    epoch_s = {}
    for stage, epochs in zip(("stage1", "stage2"), plan["epochs"], strict=True):
        set_stage(model, stage)
        flow = generator.flow(
            data["train_x"].astype(np.float32), onehot["train"], batch_size=plan["batch_size"], seed=0
        )
        timer = _EpochTimes()
        callbacks = [
            timer,
            keras.callbacks.ModelCheckpoint(
                os.path.join(plan["workdir"], "keras_best.h5"), save_best_only=True
            ),
            keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=3, min_lr=1e-7),
        ]
        model.fit(
            flow,
            epochs=epochs,
            validation_data=(_scaled(data["validation_x"]), onehot["validation"]),
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=0,
        )
        epoch_s[stage] = timer.seconds
    _, accuracy = model.evaluate(
        _scaled(data["test_x"]), onehot["test"], batch_size=plan["eval_batch_size"], verbose=0
    )
    return {"total_s": time.perf_counter() - start, "epoch_s": epoch_s, "accuracy": float(accuracy)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", choices=("speed", "fit", "recipe"), required=True)
    parser.add_argument("--plan", required=True, help="JSON written by experiments/benchmark.py")
    parser.add_argument("--result", required=True, help="where to write the measured numbers (JSON)")
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    results = {"speed": speed, "fit": fit, "recipe": recipe}[args.job](plan)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["versions"] = {"tensorflow": tf.__version__, "tf_keras": keras.__version__}
    with open(args.result, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
