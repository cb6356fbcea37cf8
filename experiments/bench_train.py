"""Training-step throughput of the full model: forward only, stage 1 and stage 2 steps.

Prints images/s for the default config (ResNet-50 + Inception head, 224 px,
batch 32) on random data, so a stage-1 step (frozen backbone) can be compared
with a plain forward pass. Usage: ``python experiments/bench_train.py [--steps N]``.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from scenecls import freeze, train
from scenecls.config import default_config
from scenecls.models import block_names, build_classifier
from scenecls.preprocessing import preprocess


def _time(fn, steps: int) -> float:
    """Seconds per call after one warm-up (compile) call."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def _loss_of_step(step, state, step_args):
    """Runs a train step and returns its loss (the value to wait for)."""
    return step(state, *step_args)[1]["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    config = default_config()
    config.model.dtype = args.dtype
    num_classes, size, batch_size = 5, args.image_size, args.batch_size
    model = build_classifier(config.model, num_classes)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, num_classes, (batch_size,)), jnp.int32),
    }

    forward = jax.jit(lambda v, x: model.apply(v, preprocess(x, "caffe")))
    results = {"forward": batch_size / _time(lambda: forward(variables, batch["image"]), args.steps)}
    for stage in ("stage1", "stage2"):
        labels = freeze.param_labels(variables["params"], variables["batch_stats"], config[stage].trainable)
        boundary = freeze.gradient_boundary(labels, block_names(config.model.stage_sizes))
        stage_model = build_classifier(config.model, num_classes, gradient_boundary=boundary)
        state = train.create_train_state(stage_model, variables, labels)
        step = jax.jit(functools.partial(train.train_step, preprocess_mode="caffe", batchnorm_train=False))
        args_ = (batch, jnp.float32(1e-5), jax.random.PRNGKey(0), jnp.ones((num_classes,)))
        results[stage] = batch_size / _time(functools.partial(_loss_of_step, step, state, args_), args.steps)
    print(
        f"ResNet-50 + {config.model.head} head, {size}px, batch {batch_size}, {args.dtype}, "
        f"{jax.devices()[0].platform}:"
    )
    for name, rate in results.items():
        print(f"  {name:8s} {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
