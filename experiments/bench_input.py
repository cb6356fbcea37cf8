"""Input throughput: dataset preparation and the augmented training pipeline, on phone-photo-sized JPEGs.

Writes ``--num_images`` synthetic scenes as ``--photo_size`` JPEGs (a third portrait, some with EXIF
rotation) to a temporary folder, prepares them (decode, resize to shorter side 256, tfds), then times
``pipeline.train_batches`` at 224 px, batch 32, with the paper's augmentation, and the evaluation
pipeline. Usage: ``python experiments/bench_input.py [--num_images 200] [--epochs 3]``.
"""

import argparse
import concurrent.futures
import io
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from scenecls.config import default_config
from scenecls.data import builder, pipeline, synthetic


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--photo_size", type=int, nargs=2, default=(1200, 1600), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--epochs", type=int, default=3)
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
        prepare_rate = (
            args.num_images / (time.perf_counter() - start),
            args.num_images / (time.process_time() - cpu_start),
        )
        _throughput(lambda e: pipeline.train_batches(prepared, config, epoch=e), 1)  # warm-up
        train_rate = _throughput(lambda e: pipeline.train_batches(prepared, config, epoch=e), args.epochs)
        config.augment.update(rotation_degrees=0.0, width_shift=0.0, height_shift=0.0, zoom=0.0)
        no_affine_rate = _throughput(lambda e: pipeline.train_batches(prepared, config, epoch=e), args.epochs)
        eval_rate = _throughput(lambda e: pipeline.eval_batches(prepared, "train", config), args.epochs)
    print(
        f"\n{args.num_images} JPEGs of {args.photo_size[1]}x{args.photo_size[0]} ({megabytes:.0f} MB), "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}:"
    )
    print(f"  {'':56} {'images/s':>9} {'per CPU-s':>10}")
    for name, (rate, per_cpu_second) in [
        ("preparation (decode, EXIF, resize to 256, tfds write)", prepare_rate),
        ("training pipeline, 224 px, batch 32, paper augmentation", train_rate),
        ("training pipeline, flip only (no affine transform)", no_affine_rate),
        ("evaluation pipeline (resize only)", eval_rate),
    ]:
        print(f"  {name:56} {rate:9.1f} {per_cpu_second:10.1f}")


if __name__ == "__main__":
    main()
