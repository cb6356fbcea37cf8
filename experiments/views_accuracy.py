"""What cached augmented views cost in accuracy: K views per image against on-the-fly augmentation.

``python experiments/views_accuracy.py [--seeds 3] [--views 0,1,3,5] [--workdir DIR]`` trains, for each
number of views K (0: augmentation on the fly, the exact recipe) and each seed, two from-scratch runs and
prints their test accuracy as mean ± standard deviation over the seeds:

- ``demo``: configs/demo.py (synthetic scenes; stage 1 caches at the backbone's output, stage 2 trains the
  whole network, so views only change stage 1);
- ``digits``: scikit-learn's 1,797 8x8 handwritten digits as a class-folder set (upscaled to 32 px), a
  small ResNet with stage 2 training conv4/conv5 and the head, so views change both stages.

The seed changes initialisation, shuffling, augmentation and the views; the data split stays fixed.
"""

import argparse
import importlib.util
import os
import statistics
import tempfile

import numpy as np
from PIL import Image

from scenecls.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config():
    """configs/demo.py."""
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.infer.demo_composites = 0
    return config


def write_digits(directory: str) -> str:
    """scikit-learn's digits as ``directory/<digit>/<n>.png`` (8x8 grey levels 0-16 -> 32 px RGB)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = os.path.join(directory, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        pixels = np.clip(image * (255 / 16), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB").save(
            os.path.join(folder, f"{index:04d}.png")
        )
    return directory


def digits_config(source: str):
    """A small ResNet from scratch on the digits, both stages with a frozen front."""
    config = demo_config()
    config.data.synthetic_per_class = 0
    config.data.source_dir = source
    config.data.store_shorter_side = 32
    config.image_size = 32
    config.batch_size = 32
    config.stage1.epochs, config.stage1.learning_rate = 5, 3e-3
    config.stage2.epochs, config.stage2.learning_rate = 8, 1e-3
    config.stage2.trainable = ("^head/", "^backbone/conv4_", "^backbone/conv5_")
    config.patch.size, config.patch.stride = 32, 16
    return config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--views", default="0,1,3,5", help="comma-separated K values (0: on the fly)")
    parser.add_argument("--workdir", help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    views = [int(k) for k in args.views.split(",")]
    with tempfile.TemporaryDirectory(prefix="scenecls_views_") as scratch:
        root = args.workdir or scratch
        digits = write_digits(os.path.join(root, "digits_source"))
        datasets = {"demo": demo_config, "digits": lambda: digits_config(digits)}
        accuracy: dict[tuple[str, int], list[float]] = {}
        for name, make_config in datasets.items():
            for k in views:
                for seed in range(args.seeds):
                    config = make_config()
                    config.seed = seed
                    config.cache_features.views = k
                    config.data.prepared_dir = os.path.join(root, f"{name}_prepared")
                    workdir = os.path.join(root, f"{name}_views{k}_seed{seed}")
                    if name == "demo":  # the demo's synthetic set, written once and shared
                        config.data.synthetic_per_class = 0
                        config.data.source_dir = demo_source(root)
                    metrics = train_and_evaluate(config, workdir)
                    accuracy.setdefault((name, k), []).append(metrics["accuracy"])
                    print(
                        f"{name} views={k} seed={seed}: test accuracy {metrics['accuracy']:.4f}", flush=True
                    )
    print("\n| data | views | test accuracy (mean ± std over seeds) | runs |\n|---|---|---|---|")
    for (name, k), values in accuracy.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        label = "0 (on the fly)" if k == 0 else str(k)
        print(f"| {name} | {label} | {statistics.mean(values):.4f} ± {spread:.4f} | {len(values)} |")


def demo_source(root: str) -> str:
    """The demo's synthetic scenes (configs/demo.py's size), written once under ``root``."""
    from scenecls.data import builder

    config = demo_config()
    return builder.resolve_source_dir(config.data, os.path.join(root, "demo_data"))


if __name__ == "__main__":
    main()
