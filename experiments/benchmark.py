"""scenecls versus the reference's Keras implementation, side by side on this machine, in one command.

``python experiments/benchmark.py [--quick]`` prepares a small synthetic scene set and a 1344x896
composite (smaller with --quick, which lists what it reduced), then runs each measurement in its own
process (so peak memory is per framework):

- scenecls ``speed``: time to first stage-1 step with an empty (cold) persistent JAX compilation cache,
  stage-1 and stage-2 train steps on an in-memory batch, stage 1 fed by its real tf.data pipeline with the
  paper's augmentation, evaluation (``evaluation.predict_split``), patch inference (``PatchClassifier``
  exact at stride 112, shared at 112 and 32), JAX matmul peak and the forward pass's FLOPs from XLA;
- scenecls ``first_step``: the first step again in a fresh process with the now warm cache;
- scenecls ``fit``: ``train.train_and_evaluate`` with stage 1 only, augmentation off, feature cache on;
- the Keras peer (``experiments/keras_peer.py``): the same figures and ``model.fit`` for the same epochs.

``--recipe`` runs instead the paper's own recipe end to end (``experiments/paper_recipe.py``: Version 4's
15 + 10 epochs with augmentation, scenecls exact and with cached views against Keras) and writes its section
of ``docs/benchmarks.md``.

Every rate excludes warm-up (compilation/tracing) and ends with ``block_until_ready`` (Keras returns
numpy arrays, so its calls end when the work does). It prints a table and writes ``docs/benchmarks.md``.
Needs the ``bench`` extra (``pip install -e ".[bench]"``: tf-keras). ``--workdir DIR`` keeps the inputs,
each job's log (the end-to-end log has timestamped training lines) and its JSON result.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from scenecls import train
from scenecls.config import default_config
from scenecls.data import synthetic
from scenecls.models import build_classifier, lookup_variant
from scenecls.patches import PatchClassifier
from scenecls.train import initial_variables, setup_stage

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEER = os.path.join(HERE, "keras_peer.py")
NOMINAL_RESNET50_GFLOP = 8.2  # per 224 px image, 4.1 GMAC
# Workload sizes: the full run, and --quick (what it reduces is printed with the results).
PLANS = {
    "full": {
        "per_class": 48,
        "steps": 5,
        "eval_images": 192,
        "loop_patches": 30,
        "patch_repeats": 2,
        "epochs": 15,
        "patch_image_hw": [896, 1344],
    },
    "quick": {
        "per_class": 12,
        "steps": 2,
        "eval_images": 64,
        "loop_patches": 4,
        "patch_repeats": 1,
        "epochs": 0,
        "patch_image_hw": [448, 672],
    },
}
PATCH_MODES = (("exact", 112), ("shared", 112), ("shared", 32))
DEFINITIONS = """\
- Train steps: one stage's jitted train step (scenecls, from `train.setup_stage` as the trainer builds it:
  freeze labels, gradient boundary, metrics read every step) vs `model.train_on_batch` (Keras), on the
  same in-memory uint8 batch, after a warm-up step; no input pipeline.
- Augmented stage 1: one epoch of each framework's real training input with the paper's augmentation:
  scenecls' tf.data `pipeline.train_batches` (decode, resize, affine, flip) feeding the step; Keras
  `ImageDataGenerator(...).flow` on in-memory arrays through `model.fit` (no JPEG decoding for Keras).
- Evaluation: `evaluation.predict_split` vs `model.predict`, same images, after a warm-up batch.
- Patches: `PatchClassifier.predict` (the whole call: patches, whole-image class, summary) vs one
  `model.predict` per 224 px patch (the reference's loop), after a warm-up call.
- Time to first step: from model construction to the first stage-1 step's result. scenecls in a process
  with an empty persistent compilation cache (cold), then in a fresh process with that cache (warm);
  Keras has no persistent cache (build, compile, first `train_on_batch`).
- Peak resident memory: `ru_maxrss` of each framework's own measurement process.
- End to end: scenecls `train.train_and_evaluate` (stage 2 off, augmentation off, feature cache on,
  early stopping off; includes model init, the feature cache, validation every epoch, checkpoints and the
  final test evaluation, compiled without a persistent cache) vs Keras build + compile +
  `fit(epochs, validation_data, class_weight)` on the same images as in-memory arrays."""


def _config(plan: dict) -> ml_collections.ConfigDict:
    """The default (paper) config on the benchmark's synthetic source, prepared once by the orchestrator."""
    config = default_config()
    config.data.source_dir = plan["source_dir"]
    config.data.prepared_dir = plan["prepared_dir"]
    config.model.dtype = plan["dtype"]
    return config


def _use_compilation_cache(directory: str) -> None:
    """The persistent compilation cache as scenecls/main.py configures it, in ``directory``."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _record(results: dict, key: str, value: Any) -> None:
    """Stores a measured figure and prints it, so a job's log shows its progress."""
    results[key] = value
    print(f"{key}: {value}", flush=True)


def run_steps(state, step: Callable, batches, class_weights: jnp.ndarray) -> tuple[Any, int, float]:
    """Runs ``step`` over ``batches`` reading each step's metrics as the trainer does; (state, images, s)."""
    key = jax.random.PRNGKey(0)
    images, start = 0, time.perf_counter()
    for batch in batches:
        state, metrics = step(state, batch, key, class_weights)
        images += int(jax.device_get(metrics)["count"])
    jax.block_until_ready(state)
    return state, images, time.perf_counter() - start


def _first_step(config: ml_collections.ConfigDict, batch: dict, num_classes: int) -> tuple[float, Any]:
    """Seconds from model construction to the first stage-1 step's result, and the initial variables."""
    start = time.perf_counter()
    variables = initial_variables(config, num_classes)
    stage = setup_stage(config, variables, "stage1", num_classes)
    run_steps(stage.state, stage.step, [batch], jnp.ones((num_classes,)))
    return time.perf_counter() - start, variables


def _matmul_gflops(matmul: Callable, size: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` float32 GFLOP/s of a size x size matmul (after one warm-up call)."""
    a = np.random.default_rng(0).standard_normal((size, size), np.float32)
    matmul(a, a)
    best = min(_seconds(matmul, a, a) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(fn: Callable, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _eval_batches(data: Any, count: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """``count`` training images (repeated as needed) as masked evaluation batches."""
    images = np.resize(data["train_x"], (count, *data["train_x"].shape[1:]))
    labels = np.resize(data["train_y"], (count,))
    return [
        {
            "image": images[i : i + batch_size],
            "label": labels[i : i + batch_size],
            "mask": np.ones(len(labels[i : i + batch_size]), bool),
            "file": np.array([""] * len(labels[i : i + batch_size])),
        }
        for i in range(0, count, batch_size)
    ]


def _flops_per_image(model, variables: dict, batch: dict, preprocessing: str) -> float:
    """FLOPs of one image's forward pass (the evaluation step), as XLA counts them."""
    from scenecls.evaluation.evaluator import eval_step  # TensorFlow (evaluation reads tf.data)

    step = jax.jit(eval_step, static_argnames=("model", "preprocessing"))
    inputs = {key: batch[key] for key in ("image", "label", "mask")}
    compiled = step.lower(variables, inputs, model=model, preprocessing=preprocessing).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return float(analysis["flops"]) / len(batch["label"])


def _patch_rates(config, model, variables, classes, image: np.ndarray, repeats: int) -> dict[str, dict]:
    """Patches/s (and patch counts) of ``PatchClassifier.predict`` in each (mode, stride)."""
    rates = {}
    for mode, stride in PATCH_MODES:
        config.patch.update(mode=mode, stride=stride)
        classifier = PatchClassifier.from_model(model, variables, classes, config)
        result = classifier.predict(image)  # warm-up (compilation)
        start = time.perf_counter()
        for _ in range(repeats):
            classifier.predict(image)
        seconds = (time.perf_counter() - start) / repeats
        rates[f"{mode}_{stride}"] = {
            "patches_s": len(result["patches"]) / seconds,
            "patches": len(result["patches"]),
            "grid": f"{result['grid']['rows']}x{result['grid']['cols']}",
            "seconds_per_image": seconds,
        }
    return rates


def scenecls_speed(plan: dict) -> dict:
    """scenecls side of every rate, the cold time to first step and the hardware reference."""
    from scenecls.data import builder, pipeline  # TensorFlow: only the CPU-vs-Keras jobs import it
    from scenecls.evaluation import predict_split

    _use_compilation_cache(plan["jax_cache"])
    config = _config(plan)
    data = np.load(plan["data"])
    num_classes, batch_size, preprocessing = (
        int(data["num_classes"]),
        config.batch_size,
        lookup_variant(config.model.variant).preprocessing,
    )
    batch = {"image": data["train_x"][:batch_size], "label": data["train_y"][:batch_size]}
    class_weights = jnp.asarray(data["class_weights"])
    results = {}
    seconds, variables = _first_step(config, batch, num_classes)
    _record(results, "first_step_cold_s", seconds)

    for stage in ("stage1", "stage2"):
        stage_setup = setup_stage(config, variables, stage, num_classes)
        step = stage_setup.step
        state, _, _ = run_steps(stage_setup.state, step, [batch], class_weights)  # warm-up
        state, images, seconds = run_steps(state, step, [batch] * plan["steps"], class_weights)
        _record(results, f"{stage}_step_img_s", images / seconds)
        if stage == "stage1":  # the real input pipeline: tf.data decoding and the paper's augmentation
            prepared = builder.prepare(config.data, plan["workdir"])
            batches = pipeline.train_batches(prepared, config, epoch=1)
            state, images, seconds = run_steps(state, step, batches, class_weights)
            _record(results, "stage1_augmented_img_s", images / seconds)
        del state  # frees the stage's optimizer state before the next

    model = build_classifier(config.model, num_classes)
    variables = jax.device_put(variables)  # on device once (train states took host copies: donation-safe)
    eval_batches = _eval_batches(data, plan["eval_images"], config.eval_batch_size)
    predict_split(model, variables, eval_batches[:1], preprocessing)  # warm-up
    start = time.perf_counter()
    predict_split(model, variables, eval_batches, preprocessing)
    _record(results, "eval_img_s", plan["eval_images"] / (time.perf_counter() - start))
    _record(
        results, "forward_flops_per_img", _flops_per_image(model, variables, eval_batches[0], preprocessing)
    )
    _record(results, "jax_matmul_gflops", _matmul_gflops(jax.jit(jnp.dot)))

    classes = [str(c) for c in data["classes"]]
    image = np.load(plan["patch_image"])
    _record(results, "patches", _patch_rates(config, model, variables, classes, image, plan["patch_repeats"]))
    return results


def scenecls_first_step(plan: dict) -> dict:
    """Time to first stage-1 step in a fresh process with the cache the ``speed`` job filled."""
    _use_compilation_cache(plan["jax_cache"])
    config = _config(plan)
    data = np.load(plan["data"])
    batch = {"image": data["train_x"][: config.batch_size], "label": data["train_y"][: config.batch_size]}
    return {"first_step_warm_s": _first_step(config, batch, int(data["num_classes"]))[0]}


def scenecls_fit(plan: dict) -> dict:
    """Stage 1 end to end through ``train.train_and_evaluate`` (no persistent cache: compiles cold)."""
    config = _config(plan)
    config.stage1.epochs, config.stage2.epochs = plan["epochs"], 0
    config.augment.update(rotation_degrees=0, width_shift=0, height_shift=0, zoom=0, horizontal_flip=False)
    config.cache_features.enabled = True
    config.early_stopping.patience = plan["epochs"] + 1  # run every epoch, as Keras' fit does
    workdir = os.path.join(plan["workdir"], "scenecls_fit")
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resumed one
    logging.use_absl_handler()  # timestamped INFO lines: the job's log shows where the time goes
    logging.set_verbosity(logging.INFO)
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "history.json")) as f:
        epochs_run = len(json.load(f)["stage1"])
    return {"stage1_fit_s": seconds, "epochs_run": epochs_run}


JOB_LABELS = {
    "ours": "scenecls speed",
    "warm": "scenecls warm first step",
    "peer": "Keras speed",
    "ours_fit": "scenecls end to end",
    "peer_fit": "Keras end to end",
}
JOBS = {"speed": scenecls_speed, "first_step": scenecls_first_step, "fit": scenecls_fit}


def _plan(kind: str, dtype: str, directory: str) -> dict:
    """Workload sizes and input paths shared by every job (written as JSON for the job processes)."""
    shutil.rmtree(os.path.join(directory, "jax_cache"), ignore_errors=True)  # "cold" must be cold
    return {
        **PLANS[kind],
        "dtype": dtype,
        "image_size": 224,
        "batch_size": 32,
        "eval_batch_size": default_config().eval_batch_size,
        "patch_size": 224,
        "patch_stride": 112,
        "workdir": directory,
        "prepared_dir": os.path.join(directory, "prepared"),
        "data": os.path.join(directory, "data.npz"),
        "patch_image": os.path.join(directory, "composite.npy"),
        "jax_cache": os.path.join(directory, "jax_cache"),
    }


def _prepare_inputs(plan: dict) -> None:
    """Synthetic scene set (prepared by scenecls), its 224 px train/val arrays for Keras, the composite."""
    from scenecls.data import builder, pipeline

    config = default_config()
    config.data.synthetic_per_class = plan["per_class"]
    config.data.prepared_dir = plan["prepared_dir"]
    prepared = builder.prepare(config.data, plan["workdir"])
    plan["source_dir"] = builder.resolve_source_dir(config.data, plan["workdir"])
    arrays = {}
    for split, name in (("train", "train"), ("validation", "val")):
        batches = list(pipeline.eval_batches(prepared, split, config))
        mask = np.concatenate([b["mask"] for b in batches])
        arrays[f"{name}_x"] = np.concatenate([b["image"] for b in batches])[mask]
        arrays[f"{name}_y"] = np.concatenate([b["label"] for b in batches])[mask]
    np.savez(
        plan["data"],
        **arrays,
        num_classes=len(prepared.classes),
        classes=np.array(prepared.classes),
        class_weights=pipeline.class_weights(prepared.counts["train"]),
    )
    image = synthetic.make_composite(*plan["patch_image_hw"], seed=0, unit=40)[0]
    np.save(plan["patch_image"], image)
    plan["counts"] = {split: int(sum(c)) for split, c in prepared.counts.items()}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_job(
    script: str, job: str, plan_path: str, tmp: str, env: dict | None = None, timeout: float | None = None
) -> dict:
    """Runs one measurement process; its JSON result, or {"error": why} with the end of its log.

    ``env`` replaces the default environment additions (JAX on the CPU); a job past ``timeout`` seconds is
    stopped and keeps what its result file holds by then.
    """
    result_path, log_path = (
        os.path.join(tmp, f"{os.path.basename(script)}.{job}.{s}") for s in ("json", "log")
    )
    command = [sys.executable, script, "--job", job, "--plan", plan_path, "--result", result_path]
    print(f"  running {os.path.basename(script)} --job {job} ...", flush=True)
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    with open(log_path, "w") as log:
        default = {"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
        env = {**os.environ, **(default if env is None else env)}
        try:
            code = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = f"stopped after {timeout:.0f} s"
    # CPU seconds near cores x wall means the job had the machine; much less means other load slowed it.
    job = {
        "wall_s": time.perf_counter() - start,
        "cpu_s": _children_cpu_seconds() - cpu_start,
        "load_average": os.getloadavg()[0],
    }
    print(
        f"    done in {job['wall_s']:.0f} s, {job['cpu_s']:.0f} CPU s, load average "
        f"{job['load_average']:.1f} (exit {code})",
        flush=True,
    )
    if code or not os.path.exists(result_path):
        with open(log_path) as f:
            tail = f.read()[-2000:]
        print(f"    FAILED, end of its log:\n{tail}", flush=True)
        last_line = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        partial = {}
        if os.path.exists(result_path):
            with open(result_path) as f:
                partial = json.load(f)
        return {**partial, "error": f"exit status {code}: {last_line}", "job": job}
    with open(result_path) as f:
        return {**json.load(f), "job": job}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "failed" if value is None else f"{value:,.{digits}f}"


def _advantage(ours: float | None, theirs: float | None, lower_is_better: bool = False) -> float | None:
    """How many times better scenecls is: rate ratio, or inverted for seconds and memory."""
    if ours is None or theirs is None:
        return None
    return theirs / ours if lower_is_better else ours / theirs


def _row(name: str, ours, theirs, target: float | None = None, lower_is_better: bool = False) -> list:
    advantage = _advantage(ours, theirs, lower_is_better)
    met = "" if target is None or advantage is None else ("yes" if advantage >= target else "no")
    return [
        name,
        _fmt(ours),
        _fmt(theirs),
        "failed" if advantage is None else f"{advantage:.2f}x",
        "" if target is None else f">= {target:g}x {met}",
    ]


def _table(plan: dict, results: dict[str, dict], numpy_peak: float) -> tuple[list, list]:
    """(main table rows, hardware rows) from the jobs' results; failed jobs show 'failed'."""
    ours, warm, peer = results["ours"], results["warm"], results["peer"]
    ours_fit, peer_fit = results["ours_fit"], results["peer_fit"]
    patches = ours.get("patches", {})
    loop = peer.get("patch_loop_patches_s")
    rows = [
        _row(
            "Stage-1 train step, batch in memory (img/s)",
            ours.get("stage1_step_img_s"),
            peer.get("stage1_step_img_s"),
        ),
        _row(
            "Stage-1 train, augmented real input pipeline (img/s)",
            ours.get("stage1_augmented_img_s"),
            peer.get("stage1_augmented_img_s"),
            1.5,
        ),
        _row(
            "Stage-2 train step, batch in memory (img/s)",
            ours.get("stage2_step_img_s"),
            peer.get("stage2_step_img_s"),
            1.3,
        ),
        _row("Evaluation forward (img/s)", ours.get("eval_img_s"), peer.get("eval_img_s")),
    ]
    for (mode, stride), target in zip(PATCH_MODES, (10, None, 50), strict=True):
        entry = patches.get(f"{mode}_{stride}", {})
        patches_per_image = entry.get("patches", "?")
        label = f"Patches {mode} stride {stride}, {patches_per_image}/image (patches/s vs per-patch loop)"
        rows.append(_row(label, entry.get("patches_s"), loop, target))
    rows += [
        _row(
            "Time to first step, cold JAX cache (s)",
            ours.get("first_step_cold_s"),
            peer.get("first_step_s"),
            lower_is_better=True,
        ),
        _row(
            "Time to first step, warm JAX cache (s)",
            warm.get("first_step_warm_s"),
            peer.get("first_step_s"),
            lower_is_better=True,
        ),
        _row(
            "Peak resident memory, speed job (MiB)",
            ours.get("peak_rss_mib"),
            peer.get("peak_rss_mib"),
            lower_is_better=True,
        ),
    ]
    if plan["epochs"]:  # --quick leaves the end-to-end pair out
        rows += [
            _row(
                f"Stage 1 end to end, {plan['epochs']} epochs, aug off (s)",
                ours_fit.get("stage1_fit_s"),
                peer_fit.get("stage1_fit_s"),
                10,
                lower_is_better=True,
            ),
            _row(
                "Peak resident memory, end-to-end job (MiB)",
                ours_fit.get("peak_rss_mib"),
                peer_fit.get("peak_rss_mib"),
                lower_is_better=True,
            ),
        ]
    flops = ours.get("forward_flops_per_img")
    peak = max(numpy_peak, ours.get("jax_matmul_gflops", 0.0))
    eval_rate = ours.get("eval_img_s")
    achieved = None if flops is None or eval_rate is None else flops * eval_rate / 1e9
    nominal = None if eval_rate is None else NOMINAL_RESNET50_GFLOP * eval_rate
    hardware = [
        ["numpy float32 matmul 4096^3, best of 3", f"{numpy_peak:.1f} GFLOP/s"],
        ["JAX float32 matmul 4096^3, best of 3", f"{_fmt(ours.get('jax_matmul_gflops'))} GFLOP/s"],
        [
            "scenecls forward FLOPs per image (XLA cost analysis, ResNet-50 + head)",
            f"{_fmt(None if flops is None else flops / 1e9, 2)} GFLOP",
        ],
        [
            "scenecls forward achieved (XLA FLOPs x evaluation img/s)",
            "failed"
            if achieved is None
            else f"{achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of peak (target >= 60%)",
        ],
        [
            f"scenecls forward achieved (nominal {NOMINAL_RESNET50_GFLOP} GFLOP/img ResNet-50 only)",
            "failed" if nominal is None else f"{nominal:.1f} GFLOP/s = {100 * nominal / peak:.0f}% of peak",
        ],
    ]
    return rows, hardware


# Sections other scripts write into docs/benchmarks.md (experiments/paper_recipe.py, accelerator.py): kept
# when this benchmark rewrites its own report above them.
PAPER_RECIPE_SECTION = "## Paper recipe end to end"
ACCELERATOR_SECTION = "## scenecls against PyTorch on an accelerator"


def write_section(path: str, section: str) -> None:
    """Replaces the section of ``path`` that starts with ``section``'s first line (a "## " heading) and runs
    to the next "## " heading, or appends ``section``; the rest of the file stays as it is."""
    heading = section.splitlines()[0]
    text = open(path).read() if os.path.exists(path) else ""
    if heading in text:
        pattern = re.compile(rf"{re.escape(heading)}\n.*?(?=\n## |\Z)", re.S)
        text = pattern.sub(lambda _: section.rstrip() + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section if text.strip() else section
    with open(path, "w") as f:
        f.write(text)


def _other_sections(path: str) -> str:
    """The other scripts' sections of ``path`` (from the first of them to the end), or ""."""
    text = open(path).read() if os.path.exists(path) else ""
    starts = [text.find(h) for h in (PAPER_RECIPE_SECTION, ACCELERATOR_SECTION) if h in text]
    return text[min(starts) :] if starts else ""


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine() -> str:
    """CPU model, core count and memory from lscpu/nproc//proc/meminfo."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])
    return (
        f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} CPU cores (nproc), "
        f"{memory_kib / 2**20:.0f} GiB memory, SIMD: {simd or 'none listed'}; {platform.platform()}"
    )


def _report(
    args: argparse.Namespace,
    plan: dict,
    results: dict[str, dict],
    numpy_peak: float,
    started: datetime.datetime,
    seconds: float,
) -> str:
    """The Markdown report: table, hardware reference, definitions, machine, versions, command, date."""
    rows, hardware = _table(plan, results, numpy_peak)
    command = " ".join(["python", "experiments/benchmark.py", *map(shlex.quote, sys.argv[1:])])
    peer_versions = results["peer"].get("versions", {})
    patches = results["ours"].get("patches", {})
    height_width = plan["patch_image_hw"]
    grids = ", ".join(f"{name} {entry['grid']}" for name, entry in patches.items())
    reduced = "Full run."
    if args.quick:
        full = PLANS["full"]
        changes = ", ".join(f"{key} {plan[key]} instead of {full[key]}" for key in full)
        reduced = f"QUICK RUN, reduced workload ({changes}): noisier, and not the 15-epoch end-to-end target."
    errors = [f"- {JOB_LABELS[key]}: {r['error']}" for key, r in results.items() if "error" in r]
    jobs = "; ".join(
        f"{name} {job['wall_s']:.0f} s wall, {job['cpu_s']:.0f} CPU s, load {job['load_average']:.1f}"
        for name, job in ((JOB_LABELS[key], r["job"]) for key, r in results.items() if "job" in r)
    )
    lines = [
        "# Benchmarks: scenecls vs the reference's Keras implementation",
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M %Z} (took {seconds / 60:.1f} min). {reduced}",
        "",
        f"- Machine: {machine()}.",
        f"- Jobs (CPU s well below {os.cpu_count()} x wall, or load above {os.cpu_count()}, means other "
        f"processes shared the cores): {jobs}.",
        f"- Versions: Python {platform.python_version()}, jax {jax.__version__}, "
        f"tensorflow {peer_versions.get('tensorflow', '?')}, tf_keras {peer_versions.get('tf_keras', '?')}.",
        f"- Model: ResNet-50 (Keras variant, random weights) + Inception head, 224 px, batch "
        f"{plan['batch_size']} (evaluation batch {plan['eval_batch_size']} for both), scenecls compute dtype "
        f"{plan['dtype']}.",
        f"- Data: {plan['per_class']} synthetic scenes per class, split {plan['counts']}; patch inference on "
        f"one {height_width[1]}x{height_width[0]} composite (scenecls grids: {grids or 'failed'}; the Keras "
        f"loop's grid at stride 112 has {results['peer'].get('patch_loop_grid', '?')} whole patches).",
        "",
        markdown_table(["measurement", "scenecls", "Keras peer", "scenecls advantage", "target"], rows),
        "",
        '"scenecls advantage" is how many times better scenecls is: scenecls/Keras for rates, Keras/scenecls '
        "for seconds and memory. All three patch rows are compared with the same Keras per-patch loop.",
        "",
        "## Hardware reference",
        "",
        markdown_table(["what", "measured"], hardware),
        "",
        "## What each row measures",
        "",
        DEFINITIONS,
    ]
    if errors:
        lines += ["", "## Failures", "", *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer images, steps, patches and epochs (< 5 min)"
    )
    parser.add_argument("--dtype", default="float32", help="scenecls config.model.dtype (float32 | bfloat16)")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "benchmarks.md"))
    parser.add_argument("--workdir", help="keep inputs, job logs and results here (default: a temp dir)")
    parser.add_argument(
        "--recipe",
        action="store_true",
        help="run only the paper's recipe end to end (experiments/paper_recipe.py; about 25 min)",
    )
    parser.add_argument(
        "--accelerator",
        action="store_true",
        help="scenecls against PyTorch on this JAX device instead (experiments/accelerator.py; its own "
        "options follow, see --accelerator --help); needs no TensorFlow",
    )
    parser.add_argument("--job", choices=sorted(JOBS), help="internal: run one scenecls measurement process")
    parser.add_argument("--plan", help="internal: the plan JSON of --job")
    parser.add_argument("--result", help="internal: where --job writes its JSON")
    if "--accelerator" in sys.argv[1:]:
        import accelerator

        accelerator.main([a for a in sys.argv[1:] if a != "--accelerator"])
        return
    args = parser.parse_args()
    if args.job:
        with open(args.plan) as f:
            results = JOBS[args.job](json.load(f))
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(args.result, "w") as f:
            json.dump(results, f, indent=2)
        return

    if args.recipe:
        import paper_recipe

        paper_recipe.run(quick=args.quick, workdir=args.workdir, output=args.output)
        return
    started, clock = datetime.datetime.now().astimezone(), time.perf_counter()
    kind = "quick" if args.quick else "full"
    with tempfile.TemporaryDirectory(prefix="scenecls_bench_") as scratch:
        tmp = args.workdir or scratch
        os.makedirs(tmp, exist_ok=True)
        plan = _plan(kind, args.dtype, tmp)
        print(f"Preparing inputs ({kind} run) in {tmp}", flush=True)
        _prepare_inputs(plan)
        plan_path = os.path.join(tmp, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        numpy_peak = _matmul_gflops(np.matmul)
        script = os.path.abspath(__file__)
        ours = run_job(script, "speed", plan_path, tmp)
        warm = run_job(script, "first_step", plan_path, tmp)
        peer = run_job(PEER, "speed", plan_path, tmp)
        # --quick (epochs 0) leaves out the end-to-end pair: at its size only compilation would be timed.
        ours_fit = run_job(script, "fit", plan_path, tmp) if plan["epochs"] else {}
        peer_fit = run_job(PEER, "fit", plan_path, tmp) if plan["epochs"] else {}
    results = {"ours": ours, "warm": warm, "peer": peer, "ours_fit": ours_fit, "peer_fit": peer_fit}
    report = _report(args, plan, results, numpy_peak, started, time.perf_counter() - clock)
    print("\n" + report)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    others = _other_sections(args.output)
    with open(args.output, "w") as f:
        f.write(report + ("\n" + others if others else ""))
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
