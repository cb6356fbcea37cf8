"""The paper's own recipe end to end, scenecls against the Keras peer, on this machine.

``python experiments/paper_recipe.py [--scale 0.05] [--quick] [--workdir DIR]`` writes a synthetic scene set
with the paper's class sizes (Trees 517, Cars 476, Buildings 339, People 320, Labs 220) times ``--scale``,
prepares it (70/15/15), and runs the default config (Version 4: stage 1 15 epochs, stage 2 10 epochs, the
paper's augmentation, class weights, 224 px, batch 32, random weights) to the end, each in its own process:

- scenecls with ``cache_features.views=0``: exact (validation cached at each stage's gradient boundary,
  training on augmented images), and with ``views=3`` (training on 3 cached augmented views per image);
- the Keras peer (``keras_peer.py --job recipe``): ``ImageDataGenerator`` augmentation, stage 1 the head
  (frozen ResNet), stage 2 the last 30 layers, validation every epoch, then the test split's evaluation.

Early stopping is off everywhere (every epoch runs). Each job reports its total wall time, each epoch's
time (training and validation) and its one-off costs; the paper-size schedule (1,310 train, 281
validation, 281 test images) is then computed from them: per-epoch and caching costs scale with the
images, the rest (model build, compilation) stays. Prints a table and writes it into
``docs/benchmarks.md`` (its "Paper recipe" section). Needs the ``bench`` extra (tf-keras).
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from benchmark import PAPER_RECIPE_SECTION, machine, write_section

from scenecls.config import default_config
from scenecls.data import builder, pipeline, synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEER = os.path.join(HERE, "keras_peer.py")
PAPER_CLASSES = {"Buildings": 339, "Cars": 476, "Labs": 220, "People": 320, "Trees": 517}
PAPER_SPLITS = {"train": 1310, "validation": 281, "test": 281}
VARIANTS = {"scenecls, views=0 (exact)": 0, "scenecls, views=3": 3}


def config_for(plan: dict, views: int):
    """The default config (paper Version 4) on the recipe's data, every epoch run, ``views`` cached."""
    config = default_config()
    config.data.source_dir, config.data.prepared_dir = plan["source_dir"], plan["prepared_dir"]
    config.stage1.epochs, config.stage2.epochs = plan["epochs"]
    config.early_stopping.patience = sum(plan["epochs"]) + 1
    config.cache_features.views = views
    return config


def scenecls_job(plan: dict, views: int, result_path: str) -> None:
    """One scenecls run of the recipe (fresh workdir, cold compilation), timed; writes the JSON result."""
    from scenecls.train import feature_cache, train_and_evaluate
    from scenecls.workdir import checkpoints

    timings = {"cache": [], "checkpoint": []}

    def timed(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            timings[name].append(time.perf_counter() - start)
            return result

        return run

    # Measurement only: how long the caches and the checkpoint writes take.
    feature_cache.cache_split = timed("cache", feature_cache.cache_split)
    checkpoints.save = timed("checkpoint", checkpoints.save)
    workdir = os.path.join(plan["workdir"], f"scenecls_views{views}")
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    metrics = train_and_evaluate(config_for(plan, views), workdir)
    total = time.perf_counter() - start
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    epochs = {stage: [r["seconds"] for r in records] for stage, records in history.items()}
    with open(result_path, "w") as f:
        json.dump(
            {
                "total_s": total,
                "epoch_s": epochs,
                "cache_s": sum(timings["cache"]),
                "checkpoint_s": sum(timings["checkpoint"]),
                "accuracy": metrics["accuracy"],
            },
            f,
        )


def _prepare(plan: dict) -> None:
    """The scaled-down paper set as class folders, prepared once; 224 px arrays of each split for Keras."""
    per_class = {name: max(4, round(count * plan["scale"])) for name, count in PAPER_CLASSES.items()}
    source = os.path.join(plan["workdir"], "source")
    shutil.rmtree(source, ignore_errors=True)
    for label, (name, count) in enumerate(per_class.items()):
        synthetic.write_dataset(os.path.join(source, "_tmp"), count, seed=label, classes=(name,))
        os.replace(os.path.join(source, "_tmp", name), os.path.join(source, name))
        shutil.rmtree(os.path.join(source, "_tmp"))
    plan["source_dir"], plan["per_class"] = source, per_class
    config = config_for(plan, 0)
    prepared = builder.prepare(config.data, plan["workdir"])
    plan["counts"] = {split: int(sum(c)) for split, c in prepared.counts.items()}
    arrays = {}
    for split in ("train", "validation", "test"):
        batches = list(pipeline.eval_batches(prepared, split, config))
        mask = np.concatenate([b["mask"] for b in batches])
        arrays[f"{split}_x"] = np.concatenate([b["image"] for b in batches])[mask]
        arrays[f"{split}_y"] = np.concatenate([b["label"] for b in batches])[mask]
    np.savez(plan["data"], **arrays, class_weights=pipeline.class_weights(prepared.counts["train"]))


def _run(command: list[str], log_path: str) -> float:
    """Runs one job process; returns its wall time (raises with the end of its log if it failed)."""
    print(f"  running {' '.join(command[1:3])} ...", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "JAX_PLATFORMS": "cpu",
            "XDG_CACHE_HOME": os.path.dirname(log_path),
        }
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if code:
        with open(log_path) as f:
            raise RuntimeError(f"{command[1]} failed (exit {code}):\n{f.read()[-2000:]}")
    seconds = time.perf_counter() - start
    print(f"    done in {seconds:.0f} s", flush=True)
    return seconds


def costs(result: dict, counts: dict, epochs_per_stage: dict[str, int]) -> dict:
    """One-off and per-epoch costs of a job, and its time at the paper's size for ``epochs_per_stage``.

    An epoch's checkpoint writes (scenecls measures them; Keras' are inside its epoch time) do not grow
    with the images; the rest of an epoch and the caches grow in proportion.
    """
    epochs = result["epoch_s"]
    count = sum(len(times) for times in epochs.values())
    checkpoint = result.get("checkpoint_s", 0.0) / max(count, 1)
    per_epoch = {stage: statistics.median(times[1:] or times) for stage, times in epochs.items()}
    one_off = result["total_s"] - sum(sum(times) for times in epochs.values()) - result.get("cache_s", 0.0)
    images = counts["train"] + counts["validation"]
    epoch_scale = (PAPER_SPLITS["train"] + PAPER_SPLITS["validation"]) / images
    cache_scale = sum(PAPER_SPLITS.values()) / sum(counts.values())
    paper = one_off + result.get("cache_s", 0.0) * cache_scale
    for stage, seconds in per_epoch.items():
        paper += epochs_per_stage[stage] * ((seconds - checkpoint) * epoch_scale + checkpoint)
    return {"per_epoch": per_epoch, "one_off": one_off, "cache": result.get("cache_s", 0.0), "paper": paper}


def _table(results: dict[str, dict], counts: dict) -> list[str]:
    paper_epochs = {"stage1": 15, "stage2": 10}  # the paper's schedule, whatever this run's
    keras = costs(results["Keras peer"], counts, paper_epochs)
    rows = [
        "| run | total (s) | one-off (s) | caches (s) | stage-1 epoch (s) | stage-2 epoch (s) "
        "| paper size (min) | vs Keras, measured | vs Keras, paper size | test accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        c = costs(result, counts, paper_epochs)
        rows.append(
            f"| {name} | {result['total_s']:.0f} | {c['one_off']:.0f} | {c['cache']:.0f} | "
            f"{c['per_epoch'].get('stage1', 0):.2f} | {c['per_epoch'].get('stage2', 0):.2f} | "
            f"{c['paper'] / 60:.1f} | {results['Keras peer']['total_s'] / result['total_s']:.2f}x | "
            f"{keras['paper'] / c['paper']:.2f}x | {result['accuracy']:.3f} |"
        )
    return rows


def run(
    scale: float = 0.05, quick: bool = False, workdir: str | None = None, output: str | None = None
) -> str:
    """Runs the three jobs and writes the "Paper recipe" section into ``output``; returns the section."""
    output = output or os.path.join(REPO, "docs", "benchmarks.md")
    started = datetime.datetime.now().astimezone()
    with tempfile.TemporaryDirectory(prefix="scenecls_recipe_") as scratch:
        workdir = workdir or scratch
        os.makedirs(workdir, exist_ok=True)
        plan = {
            "scale": scale,
            "epochs": (2, 2) if quick else (15, 10),
            "workdir": workdir,
            "prepared_dir": os.path.join(workdir, "prepared"),
            "data": os.path.join(workdir, "data.npz"),
            "image_size": 224,
            "batch_size": 32,
            "eval_batch_size": default_config().eval_batch_size,
        }
        _prepare(plan)
        plan_path = os.path.join(workdir, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        results = {}
        for name, views in VARIANTS.items():
            result_path = os.path.join(workdir, f"views{views}.json")
            job = ["--job", str(views), "--plan", plan_path, "--result", result_path]
            _run([sys.executable, __file__, *job], os.path.join(workdir, f"views{views}.log"))
            with open(result_path) as f:
                results[name] = json.load(f)
        result_path = os.path.join(workdir, "keras.json")
        command = [sys.executable, PEER, "--job", "recipe", "--plan", plan_path, "--result", result_path]
        _run(command, os.path.join(workdir, "keras.log"))
        with open(result_path) as f:
            results["Keras peer"] = json.load(f)
    section = _section(plan, results, started)
    print("\n" + section)
    write_section(output, section)
    print(f"Wrote the section into {output}")
    return section


def _section(plan: dict, results: dict[str, dict], started: datetime.datetime) -> str:

    counts = plan["counts"]
    command = " ".join(["python", "experiments/paper_recipe.py", *map(shlex.quote, sys.argv[1:])])
    return "\n".join(
        [
            PAPER_RECIPE_SECTION,
            "",
            f"Written by `{command}` on {started:%Y-%m-%d %H:%M %Z}. Machine: {machine()}.",
            "",
            f"Default config (paper Version 4: {plan['epochs'][0]} + {plan['epochs'][1]} epochs, "
            "augmentation, class weights, 224 px, batch 32, random weights, early stopping off) on synthetic "
            f"scenes with the paper's class sizes x {plan['scale']} ({plan['per_class']}; split {counts}).",
            "",
            *_table(results, counts),
            "",
            "One-off: everything outside the epochs and the caches (data loading, model build, compilation, "
            "the final test evaluation). Epoch: training and validation, median of the stage's epochs after "
            "the first (which compiles). Paper size: one-off, plus caches and epochs scaled to 1,310 train, "
            "281 validation and 281 test images (scenecls' checkpoint writes once per epoch, unscaled) "
            "for 15 + 10 epochs. views=3 trains on 3 cached augmented views per image (an approximation, see "
            "`scenecls/train/feature_cache.py`); test accuracy of random-init weights on a tiny set says "
            "nothing about the recipe's accuracy, only that the run trained.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.05, help="share of the paper's class sizes")
    parser.add_argument("--quick", action="store_true", help="2 + 2 epochs instead of 15 + 10 (a dry run)")
    parser.add_argument("--workdir", help="keep inputs, logs and results here (default: a temp dir)")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "benchmarks.md"))
    parser.add_argument("--job", type=int, help="internal: run scenecls with this many views")
    parser.add_argument("--plan", help="internal: the plan JSON of --job")
    parser.add_argument("--result", help="internal: where --job writes its JSON")
    args = parser.parse_args()
    if args.job is not None:
        with open(args.plan) as f:
            scenecls_job(json.load(f), args.job, args.result)
        return
    run(args.scale, args.quick, args.workdir, args.output)


if __name__ == "__main__":
    main()
