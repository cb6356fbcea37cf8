"""Input throughput against the step it feeds: can the host keep a stage-1 train step busy?

Writes ``--num_images`` synthetic scenes as ``--photo_size`` JPEGs (a third portrait, some with EXIF
rotation) to a temporary folder and prepares them (decode, resize to shorter side 256, tfds). Then, at
224 px, batch 32, with the paper's augmentation:

- what the host delivers (images/s, and per CPU-second) in each input mode: streamed from the records with
  the augmentation on the host (tf.data), from memory (``config.data.in_memory``) with the augmentation on
  the host, and from memory leaving the augmentation to the device (the host only indexes);
- the stage-1 train step alone on a fixed batch (step only; with the augmentation inside the step for the
  device mode), and stage 1 end to end from each input mode, as the trainer runs it (batches sharded onto
  the mesh, metrics read every step). End to end / step only is the share of the step rate the input
  keeps; the rounds alternate the modes so machine noise hits each alike.

Usage: ``python experiments/bench_input.py [--num_images 200] [--epochs 2] [--steps 6] [--rounds 2]``.
"""

import argparse
import concurrent.futures
import functools
import io
import itertools
import os
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from benchmark import run_steps
from PIL import Image

from scenecls import parallel
from scenecls.config import default_config
from scenecls.data import builder, pipeline, synthetic
from scenecls.train import initial_variables, setup_stage

# (name, data held in memory, augmentation where)
MODES = (
    ("streamed, host augmentation", False, "host"),
    ("in memory, host augmentation", True, "host"),
    ("in memory, device augmentation", True, "device"),
)


def _write_photo(root: str, index: int, size: tuple[int, int]) -> None:
    """One phone-like JPEG: quality 92, portrait for every third, EXIF-rotated for every fourth."""
    name = synthetic.CLASSES[index % len(synthetic.CLASSES)]
    rng = np.random.default_rng(index)
    height, width = size if index % 3 else size[::-1]
    image = synthetic.render_scene(name, height, width, rng)
    buffer = io.BytesIO()
    if index % 4 == 3:
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.rot90(image)).save(buffer, format="JPEG", quality=92, exif=exif)
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, f"IMG_{index:05d}.jpg"), "wb") as f:
        f.write(buffer.getvalue())


def _throughput(make_batches, epochs: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) over ``epochs`` passes, each building its pipeline anew as
    training does. The second is immune to other processes sharing the cores: times the free core count,
    it estimates the rate of an idle machine."""
    images, start, cpu_start = 0, time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        for batch in make_batches(epoch):
            images += int(batch.get("mask", np.ones(len(batch["label"]), bool)).sum())
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def _mode_config(config, memory: bool, where: str):
    mode = config.copy_and_resolve_references()
    mode.data.in_memory = "true" if memory else "false"
    mode.augment.where = where
    return mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--photo_size", type=int, nargs=2, default=(1200, 1600), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--epochs", type=int, default=2, help="passes per host delivery measurement")
    parser.add_argument("--steps", type=int, default=6, help="train steps per mode and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = default_config()  # 224 px, batch 32, the paper's augmentation, shorter side 256 stored
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "photos")
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda i: _write_photo(source, i, tuple(args.photo_size)), range(args.num_images)))
        megabytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(source) for f in fs) / 1e6
        config.data.source_dir = source
        tf.zeros(1).numpy()  # start TensorFlow's runtime outside the timed preparation
        start, cpu_start = time.perf_counter(), time.process_time()
        prepared = builder.prepare(config.data, tmp)
        if not pipeline.steps_per_epoch(prepared, config):
            parser.error(f"--num_images {args.num_images} leaves less than one training batch of 32")
        rates = {
            "preparation (decode, EXIF, resize to 256, tfds write)": (
                args.num_images / (time.perf_counter() - start),
                args.num_images / (time.process_time() - cpu_start),
            )
        }
        start = time.perf_counter()
        memory = pipeline.load_in_memory(prepared, config)
        decode_seconds = time.perf_counter() - start
        configs = {name: _mode_config(config, held, where) for name, held, where in MODES}

        def batches(name: str, epoch: int):
            held = memory if configs[name].data.in_memory == "true" else None
            return pipeline.train_batches(prepared, configs[name], epoch, memory=held)

        for name, _, _ in MODES:
            batches(name, 0)  # warm-up
            rates[f"host delivery: {name}"] = _throughput(functools.partial(batches, name), args.epochs)
        eval_rate = _throughput(lambda e: pipeline.eval_batches(prepared, "train", config), args.epochs)
        rates["evaluation pipeline (resize only)"] = eval_rate
        step_rates, end_to_end = _stage1_rates(prepared, configs, batches, args.steps, args.rounds)
    print(
        f"\n{args.num_images} JPEGs of {args.photo_size[1]}x{args.photo_size[0]} ({megabytes:.0f} MB), "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; training split decoded into "
        f"memory in {decode_seconds:.1f} s ({memory.images.nbytes / 2**20:.0f} MiB):"
    )
    print(f"  {'':56} {'images/s':>9} {'per CPU-s':>10}")
    for name, (rate, per_cpu_second) in rates.items():
        print(f"  {name:56} {rate:9.1f} {per_cpu_second:10.1f}")
    runs = f"{args.rounds} x {args.steps} steps per mode"
    print(f"\nStage 1 (ResNet-50 + Inception head, random weights), {runs}, images/s:")
    print(f"  {'':34} {'step only':>10} {'end to end':>11} {'ratio':>6}")
    for name, _, where in MODES:
        step = step_rates[where]
        print(f"  {name:34} {step:10.1f} {end_to_end[name]:11.1f} {end_to_end[name] / step:6.0%}")


def _stage1_rates(prepared, configs, batches, steps: int, rounds: int) -> tuple[dict, dict]:
    """Images/s of the stage-1 step alone (per augmentation place) and end to end (per mode), rounds
    alternating the measurements."""
    num_classes = len(prepared.classes)
    any_config = next(iter(configs.values()))
    variables = initial_variables(any_config, num_classes)
    weights = jnp.ones((num_classes,))
    stages = {}
    for config in configs.values():
        where = config.augment.where
        if where not in stages:
            stages[where] = setup_stage(config, variables, "stage1", num_classes)
    fixed = parallel.shard_batch(stages["host"].mesh, next(iter(batches(next(iter(configs)), 0))))
    states = {where: stage.state for where, stage in stages.items()}
    for where, stage in stages.items():  # compile
        states[where], _, _ = run_steps(states[where], stage.step, [fixed], weights)
    totals = {key: [0, 0.0] for key in [*stages, *configs]}

    def measure(key: str, where: str, feed) -> None:
        states[where], images, seconds = run_steps(states[where], stages[where].step, feed, weights)
        totals[key][0] += images
        totals[key][1] += seconds

    for _ in range(rounds):
        for name, config in configs.items():
            where = config.augment.where
            measure(where, where, itertools.repeat(fixed, steps))
            epochs = itertools.chain.from_iterable(batches(name, epoch) for epoch in itertools.count(1))
            feed = map(functools.partial(parallel.shard_batch, stages[where].mesh), epochs)
            measure(name, where, itertools.islice(feed, steps))
    rate = {key: images / seconds for key, (images, seconds) in totals.items()}
    return {where: rate[where] for where in stages}, {name: rate[name] for name in configs}


if __name__ == "__main__":
    main()
