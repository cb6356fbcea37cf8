"""The demo's patch-inference example: synthetic composite scenes classified by the trained model."""

import os

import ml_collections
from PIL import Image

from scenecls import console
from scenecls.data import synthetic
from scenecls.patches.run import run_inference


def write_composites(out_dir: str, count: int, height: int, width: int, seed: int = 0) -> list[str]:
    """Writes ``count`` composite scenes as PNG, printing each one's true class areas; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for index in range(count):
        image, _, fractions = synthetic.make_composite(height, width, seed=seed + index)
        path = os.path.join(out_dir, f"composite_{index}.png")
        Image.fromarray(image).save(path)
        shares = ", ".join(f"{name} {share:.0%}" for name, share in fractions.items() if share > 0)
        console.say(f"{path}: true areas {shares}")
        paths.append(path)
    return paths


def run_demo_inference(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Patch inference on ``config.infer.demo_composites`` synthetic composites; returns the exit status."""
    size = config.patch.size
    composites = os.path.join(workdir, "composites")
    write_composites(composites, config.infer.demo_composites, height=4 * size, width=6 * size)
    infer_config = config.copy_and_resolve_references()
    infer_config.infer.inputs = composites
    return run_inference(infer_config, workdir)
