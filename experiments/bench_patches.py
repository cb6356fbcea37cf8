"""Patch-inference speed and shared-vs-exact agreement, in one run.

Speed: the full model (ResNet-50 + Inception head, random weights: same cost as trained ones), 224 px
patches on a 1344x896 synthetic composite, in patches per second for

- ``loop``: the reference's approach, one jitted batch-1 call per patch (crop, resize, predict);
- ``exact``: ``PatchClassifier`` exact mode, stride 112 (chunks of ``--chunk_size``, vmapped);
- ``shared/112`` and ``shared/32``: shared-feature mode at stride 112 (rounded to 96 px) and 32.

Compilation is excluded (one warm-up call each); ``exact`` and ``shared`` times are whole ``predict``
calls, including the whole-image prediction and the coverage summary.

Agreement: a small ResNet (one block per stage, width 16) is trained briefly at 224 px on synthetic
scenes, then shared mode's patch labels are compared with exact mode on the same boxes, and both with the
composites' true masks. Usage: ``python experiments/bench_patches.py [--quick]``.

Measured on the 2-core AMD EPYC development machine (CPU, float32, chunk 32; other jobs shared the cores,
so absolute rates varied up to 2x between runs, the ratios much less):
loop 8.3, exact 8.0, shared/112 25.8 (3.1x), shared/32 53.2 (6.4x) patches/s. The CPU is compute-bound,
so batching alone barely beats a jitted batch-1 loop; shared mode wins by not recomputing overlaps, and at
stride 32 its remaining cost is mostly the Inception head (about 0.9 GFLOP per window).
Agreement (300 training steps, 8 composites): 0.970 at stride 112 (832 patches), 0.974 at stride 32
(6336 patches); patch accuracy against the masks: exact 0.870 / 0.866, shared 0.857 / 0.857.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from scenecls import freeze, train
from scenecls.config import default_config
from scenecls.data import synthetic
from scenecls.data.images import resize
from scenecls.models import build_classifier
from scenecls.patches import PatchClassifier
from scenecls.patches.engines import SharedModel, classify_boxes, model_patch_fn
from scenecls.patches.render import render
from scenecls.preprocessing import mode_for_variant, preprocess

CLASSES = synthetic.CLASSES
HEIGHT, WIDTH = 896, 1344
UNIT = 40  # scene element size in composites and training scenes: a 224 px patch shows about 5 of them


def _config(model_overrides: dict, mode: str = "exact", stride: int = 112, chunk_size: int = 32):
    config = default_config()
    config.model.update(model_overrides)
    config.patch.update(mode=mode, stride=stride, chunk_size=chunk_size)
    return config


def _predict_rate(classifier: PatchClassifier, image: np.ndarray, repeats: int) -> tuple[float, int]:
    """Patches per second of ``predict`` after a warm-up call, and the patch count."""
    patches = len(classifier.predict(image)["patches"])
    start = time.perf_counter()
    for _ in range(repeats):
        classifier.predict(image)
    return patches * repeats / (time.perf_counter() - start), patches


def speed(repeats: int, loop_patches: int, chunk_size: int) -> dict[str, tuple[float, int]]:
    """Patches/s (and patch count) of the four ways, full ResNet-50 + Inception head."""
    config = _config({}, chunk_size=chunk_size)
    model = build_classifier(config.model, len(CLASSES))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    image = synthetic.make_composite(HEIGHT, WIDTH, seed=0, unit=UNIT)[0]
    mode = mode_for_variant(config.model.variant)

    one = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, preprocess(x, mode))))
    boxes = PatchClassifier.from_model(model, variables, CLASSES, config).predict(image)["patches"]
    crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in (p["box"] for p in boxes[:loop_patches])]
    np.asarray(one(variables, crops[0][None]))  # compile
    start = time.perf_counter()
    for crop in crops:  # like the reference: model.predict on one patch at a time
        np.asarray(one(variables, resize(crop, 224, 224)[None]))
    results = {"loop": (len(crops) / (time.perf_counter() - start), len(boxes))}
    for name, mode_name, stride in (
        ("exact", "exact", 112),
        ("shared/112", "shared", 112),
        ("shared/32", "shared", 32),
    ):
        config = _config({}, mode_name, stride, chunk_size)
        classifier = PatchClassifier.from_model(model, variables, CLASSES, config)
        results[name] = _predict_rate(classifier, image, repeats)
    return results


def _scene_pool(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` rendered scenes (size x size) of random classes, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(CLASSES), size=count)
    units = rng.uniform(0.75, 1.25, count) * UNIT
    images = np.stack(
        [
            synthetic.render_scene(CLASSES[c], size, size, rng, unit=u)
            for c, u in zip(labels, units, strict=True)
        ]
    )
    return images, labels


def train_small_model(steps: int, batch_size: int = 16, seed: int = 0):
    """(config, model, variables) of a small ResNet trained from scratch on 224 px synthetic scene crops."""
    # torchvision variant: its BatchNorm momentum (0.9) settles the running statistics within a short run.
    overrides = {"variant": "torchvision", "stage_sizes": (1, 1, 1, 1), "width": 16, "head_filters": 32}
    config = _config({**overrides, "dropout_rate": 0.3})
    model = build_classifier(config.model, len(CLASSES))
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 224, 224, 3)))
    labels = freeze.param_labels(variables["params"], variables["batch_stats"], (".*",), train_batchnorm=True)
    state = train.create_train_state(model, variables, labels)
    step = jax.jit(
        lambda s, b, k: train.train_step(
            s, b, jnp.float32(2e-3), k, jnp.ones(len(CLASSES)), preprocess_mode="torch", batchnorm_train=True
        )
    )
    pool, pool_labels = _scene_pool(max(64, steps * batch_size // 8), 288, seed)
    rng = np.random.default_rng(seed + 1)
    start, correct, seen = time.perf_counter(), 0, 0
    for i in range(steps):
        picks = rng.integers(len(pool), size=batch_size)
        y, x = rng.integers(0, 288 - 224 + 1, (2, batch_size))
        crops = np.stack([pool[p, a : a + 224, b : b + 224] for p, a, b in zip(picks, y, x, strict=True)])
        crops = np.where(rng.random(batch_size)[:, None, None, None] < 0.5, crops[:, :, ::-1], crops)
        state, metrics = step(state, {"image": crops, "label": pool_labels[picks]}, jax.random.PRNGKey(i))
        if i >= steps - 20:
            correct, seen = correct + int(metrics["correct"]), seen + batch_size
    print(
        f"trained the small model for {steps} steps of {batch_size} in {time.perf_counter() - start:.0f}s; "
        f"train accuracy over the last {seen} examples: {correct / max(seen, 1):.2f}"
    )
    return config, model, {"params": state.params, "batch_stats": state.batch_stats}


def _mask_labels(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Majority true class in each box."""
    return np.array(
        [np.bincount(mask[y0:y1, x0:x1].ravel(), minlength=len(CLASSES)).argmax() for x0, y0, x1, y1 in boxes]
    )


def agreement(config, model, variables, composites: int, strides: tuple[int, ...]) -> dict[int, dict]:
    """Per stride: shared vs exact label agreement on shared mode's boxes, and accuracy against the masks."""
    mode = mode_for_variant(config.model.variant)
    shared = SharedModel(model, variables, config.image_size, mode)
    patch_fn = model_patch_fn(model, variables, config.image_size, mode)
    totals = {s: np.zeros(4) for s in strides}  # agree, exact correct, shared correct, count
    for seed in range(composites):
        image, mask, _ = synthetic.make_composite(HEIGHT, WIDTH, seed=100 + seed, regions=5, unit=UNIT)
        for stride in strides:
            analysis = shared.analyse(image, config.patch.size, stride)
            boxes = np.rint(analysis.boxes).astype(int)  # exact pixel boxes: the size is a multiple of 32
            exact = classify_boxes(image, boxes, patch_fn, config.patch.chunk_size).argmax(1)
            shared_labels, truth = analysis.probs.argmax(1), _mask_labels(mask, boxes)
            totals[stride] += [
                (exact == shared_labels).sum(),
                (exact == truth).sum(),
                (shared_labels == truth).sum(),
                len(boxes),
            ]
    return {
        s: {
            "agreement": t[0] / t[3],
            "exact_accuracy": t[1] / t[3],
            "shared_accuracy": t[2] / t[3],
            "patches": int(t[3]),
        }
        for s, t in totals.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, training steps and composites")
    parser.add_argument("--chunk_size", type=int, default=32)
    parser.add_argument("--example", default="", help="also write the trained model's overlay PNG here")
    args = parser.parse_args()
    repeats, loop_patches, steps, composites = (1, 8, 100, 2) if args.quick else (3, 30, 300, 8)

    print(
        f"Speed: ResNet-50 + Inception head (random weights), 224 px patches, {WIDTH}x{HEIGHT} composite, "
        f"chunk {args.chunk_size}, {jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    rates = speed(repeats, loop_patches, args.chunk_size)
    for name, (rate, patches) in rates.items():
        print(
            f"  {name:11s} {rate:8.1f} patches/s  ({patches} patches per image, "
            f"{rate / rates['loop'][0]:5.1f}x the per-patch loop)"
        )

    config, model, variables = train_small_model(steps)
    print(
        f"Shared vs exact agreement (small ResNet trained {steps} steps from scratch at 224 px; "
        f"{composites} composites {WIDTH}x{HEIGHT}, 5 regions):"
    )
    for stride, stats in agreement(config, model, variables, composites, (112, 32)).items():
        print(
            f"  stride {stride:3d}: agreement {stats['agreement']:.3f} over {stats['patches']} patches; "
            f"accuracy vs mask: exact {stats['exact_accuracy']:.3f}, shared {stats['shared_accuracy']:.3f}"
        )
    if args.example:
        image = synthetic.make_composite(HEIGHT, WIDTH, seed=7, regions=5, unit=UNIT)[0]
        result = PatchClassifier.from_model(model, variables, CLASSES, config).predict(image)
        render(image, result, args.example)
        print(f"example overlay: {args.example}")


if __name__ == "__main__":
    main()
