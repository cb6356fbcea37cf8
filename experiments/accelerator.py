"""scenecls against PyTorch on the JAX device present (a GPU, say): ``benchmark.py --accelerator``.

``python experiments/benchmark.py --accelerator [--batch 256] [--steps 20] ...`` runs two processes one
after the other, each with the accelerator to itself:

- scenecls (this file's ``jax`` job): for float32 and bfloat16 (``config.model.dtype``), the forward pass
  and the stage-1 and stage-2 train steps (``train.setup_stage``, as the trainer builds them) in img/s,
  on a batch already in device memory; the time to first step (model construction to the first stage-1
  step's result, compiled cold in a fresh process); ``PatchClassifier`` exact and shared patch inference on
  one synthetic photo (4000x3000 by default) in patches/s and seconds per photo; XLA's FLOP count of each
  compiled function (``lower(...).compile().cost_analysis()``) against a measured matmul peak (a large
  jitted matmul in each dtype);
- the PyTorch peer (``experiments/torch_peer.py``): torchvision ResNet-50 plus the same Inception head,
  eager and ``torch.compile``.

The model is ResNet-50 in scenecls' ``torchvision`` variant (v1.5, torchvision's architecture) with the
default Inception head, random weights, 224 px, 5 classes; stage 2 trains the default ``stage2.trainable``
(Keras' last 30 layers). It prints a side-by-side table and writes it into ``docs/benchmarks.md`` as its
section (replacing the last one; the rest of the file stays). TensorFlow is not imported on this path (a
GPU image has none): scenecls' model, stage setup, step and patch inference run without it.

Dry run on a CPU (seconds to minutes): ``--batch 2 --image-size 64 --photo 160x120 --steps 2 --warmup 1
--matmul-size 256 --torch-compile-dtypes ""``; ``--output -`` prints without writing the docs.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from benchmark import ACCELERATOR_SECTION, REPO, machine, markdown_table, run_job, write_section

from scenecls import parallel
from scenecls.config import default_config
from scenecls.data import synthetic
from scenecls.models import build_classifier, lookup_variant
from scenecls.models.precision import COMPUTE_DTYPES
from scenecls.models.preprocessing import preprocess
from scenecls.patches import PatchClassifier
from scenecls.train import setup_stage
from scenecls.train.stage import init_variables

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "torch_peer.py")
NUM_CLASSES = len(synthetic.CLASSES)
DTYPES = tuple(COMPUTE_DTYPES)  # float32, bfloat16
PATCH_MODES = (("exact", 112), ("shared", 112), ("shared", 32))  # strides at 224 px (scaled with it)
# Targets of issue 16 on an H100/H200-class GPU: scenecls over PyTorch eager, per measurement.
TARGETS = {"forward": 1.0, "stage1": 1.2, "stage2": 1.0}
SHARED_STRIDE_32_SECONDS = 1.0  # shared patch inference at stride 32 on the photo, seconds at most


def accelerator_config(plan: dict) -> ml_collections.ConfigDict:
    """The measured configuration: defaults, torchvision's ResNet-50, the plan's image and batch size."""
    config = default_config()
    config.model.variant = "torchvision"
    config.image_size = plan["image_size"]
    config.batch_size = plan["batch_size"]
    config.patch.size = plan["image_size"]
    config.patch.chunk_size = plan["batch_size"]
    # Steps without augmentation, like the PyTorch peer's (auto would warp each batch inside the step on a
    # GPU; experiments/bench_input.py measures that end to end).
    config.augment.where = "host"
    return config


def patch_stride(stride_at_224: int, image_size: int) -> int:
    """A 224 px stride scaled to ``image_size`` (dry runs use smaller images)."""
    return max(1, round(stride_at_224 * image_size / 224))


def _gflop(jitted, *args) -> float:
    """GFLOP of one call of ``jitted`` on ``args``, as XLA counts them after compilation."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return float(analysis["flops"]) / 1e9


def _timed_calls(fn, count: int) -> float:
    """Seconds for ``count`` calls of ``fn`` (each result blocked on)."""
    start = time.perf_counter()
    for _ in range(count):
        jax.block_until_ready(fn())
    return time.perf_counter() - start


def matmul_tflops(dtype: str, size: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` TFLOP/s of a jitted size^3 matmul in ``dtype`` on the default device."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.dtype(dtype))
    matmul = jax.jit(jnp.dot)
    jax.block_until_ready(matmul(a, a))
    best = min(_timed_calls(lambda: matmul(a, a), 1) for _ in range(repeats))
    return 2 * size**3 / best / 1e12


def _forward(model, variables, images, *, preprocessing: str):
    return model.apply(variables, preprocess(images, preprocessing))


def measure_jax(plan: dict, record) -> None:
    """scenecls' figures for every dtype in the plan; ``record(key, value)`` stores each as it comes."""
    device = jax.devices()[0]
    record("device", f"{device.platform}: {device.device_kind} (x{jax.device_count()})")
    record("jax_version", jax.__version__)
    config = accelerator_config(plan)
    size, batch_size, steps, warmup = plan["image_size"], plan["batch_size"], plan["steps"], plan["warmup"]
    preprocessing = lookup_variant(config.model.variant).preprocessing
    rng = np.random.default_rng(0)
    mesh = parallel.create_mesh()
    batch = parallel.shard_batch(
        mesh,
        {
            "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32),
        },
    )
    class_weights, key = jnp.ones((NUM_CLASSES,)), jax.random.PRNGKey(0)
    photo = np.load(plan["photo"])
    for dtype in DTYPES:  # first: seconds, and the peaks every share needs
        record(f"matmul_tflops/{dtype}", matmul_tflops(dtype, plan["matmul_size"]))
    for dtype in plan["dtypes"]:
        config.model.dtype = dtype
        start = time.perf_counter()  # time to first step: construction, compilation, the step
        variables = init_variables(config.model, NUM_CLASSES, size, config.seed)
        for stage_name in ("stage1", "stage2"):
            stage = setup_stage(config, variables, stage_name, NUM_CLASSES, mesh)
            state, metrics = stage.step(stage.state, batch, key, class_weights)
            jax.device_get(metrics)
            if stage_name == "stage1":
                record(f"{dtype}/first_step_s", time.perf_counter() - start)
            gflop = _gflop(stage.step, state, batch, key, class_weights)
            for _ in range(warmup):
                state, metrics = stage.step(state, batch, key, class_weights)
            jax.device_get(metrics)
            clock = time.perf_counter()
            for _ in range(steps):  # the trainer's loop: metrics read every step
                state, metrics = stage.step(state, batch, key, class_weights)
                jax.device_get(metrics["count"])
            jax.block_until_ready(state)
            record(f"{dtype}/{stage_name}_img_s", steps * batch_size / (time.perf_counter() - clock))
            record(f"{dtype}/{stage_name}_gflop_img", gflop / batch_size)
            del state, stage
        model = build_classifier(config.model, NUM_CLASSES)
        variables = jax.device_put(variables, parallel.replicated(mesh))
        forward = jax.jit(functools.partial(_forward, model, preprocessing=preprocessing))
        record(f"{dtype}/forward_gflop_img", _gflop(forward, variables, batch["image"]) / batch_size)

        def run(forward=forward, variables=variables):
            return forward(variables, batch["image"])

        _timed_calls(run, max(warmup, 1))
        record(f"{dtype}/forward_img_s", steps * batch_size / _timed_calls(run, steps))
        for mode, stride_at_224 in PATCH_MODES:
            stride = patch_stride(stride_at_224, size)
            config.patch.update(mode=mode, stride=stride)
            classifier = PatchClassifier.from_model(model, variables, synthetic.CLASSES, config)
            result = classifier.predict(photo)  # warm-up: compilation
            seconds = _timed_calls(lambda c=classifier: c.predict(photo), plan["patch_repeats"])
            seconds /= plan["patch_repeats"]
            record(
                f"{dtype}/patches_{mode}_{stride_at_224}",
                {"stride": stride, "patches": len(result["patches"]), "seconds": seconds},
            )


def jax_job(plan_path: str, result_path: str) -> None:
    """The scenecls measurement process: writes its results JSON after every figure."""
    with open(plan_path) as f:
        plan = json.load(f)
    results: dict[str, Any] = {}

    def record(key: str, value: Any) -> None:
        results[key] = value
        print(f"{key}: {value}", flush=True)
        with open(result_path, "w") as f:
            json.dump(results, f, indent=2)

    measure_jax(plan, record)


def _fmt(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _cell(text: str, limit: int = 60) -> str:
    """``text`` fit for a Markdown table cell (the Failures list has it whole)."""
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ratio(ours: Any, theirs: Any, lower_is_better: bool = False) -> float | None:
    if ours is None or theirs is None:
        return None
    return theirs / ours if lower_is_better else ours / theirs


def table(plan: dict, ours: dict, peer: dict) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, side-by-side rows, hardware rows) from the two jobs' results."""
    compile_dtypes = plan["torch_compile_dtypes"]
    header = ["measurement"]
    for dtype in plan["dtypes"]:
        header += [f"scenecls {dtype}", f"PyTorch eager {dtype}"]
        header += [f"PyTorch compile {dtype}"] if dtype in compile_dtypes else []
        header += [f"scenecls / eager {dtype}"]
    header += ["target"]

    def peer_cell(dtype: str, mode: str, key: str, stage: str) -> str:
        value = peer.get(f"{dtype}/{mode}/{key}")
        if value is not None:
            return _fmt(value, 2 if key == "first_step_s" else 1)
        error = peer.get(f"{dtype}/{mode}/{stage}_error")
        return f"failed ({_cell(error)})" if error else "failed (see Failures)" if "error" in peer else "—"

    rows = []
    names = (
        ("forward", "Forward pass (img/s)", "forward_img_s", "stage1", False),
        ("stage1", "Stage-1 train step, backbone frozen (img/s)", "stage1_img_s", "stage1", False),
        ("stage2", "Stage-2 train step, last 30 layers (img/s)", "stage2_img_s", "stage2", False),
        ("first", "Time to first stage-1 step, cold (s)", "first_step_s", "stage1", True),
    )
    for name, label, key, stage, lower in names:
        row, met = [label], []
        for dtype in plan["dtypes"]:
            value = ours.get(f"{dtype}/{key}")
            row += [_fmt(value, 2 if lower else 1), peer_cell(dtype, "eager", key, stage)]
            if dtype in compile_dtypes:
                row.append(peer_cell(dtype, "compile", key, stage))
            ratio = _ratio(value, peer.get(f"{dtype}/eager/{key}"), lower)
            row.append("—" if ratio is None else f"{ratio:.2f}x")
            if name in TARGETS and ratio is not None:
                met.append(f"{dtype} {'yes' if ratio >= TARGETS[name] else 'no'}")
        target = f">= {TARGETS.get(name, 0):g}x" + (f": {', '.join(met)}" if met else "")
        row.append(target if name in TARGETS else "")
        rows.append(row)
    for mode, stride_at_224 in PATCH_MODES:
        entries = [ours.get(f"{d}/patches_{mode}_{stride_at_224}") for d in plan["dtypes"]]
        known = next((e for e in entries if e), None)
        count = known["patches"] if known else "?"
        label = f"Patches {mode}, stride {patch_stride(stride_at_224, plan['image_size'])}, {count}"
        row = [f"{label} per {plan['photo_hw'][1]}x{plan['photo_hw'][0]} photo (patches/s; s/photo)"]
        target = ""
        for dtype, entry in zip(plan["dtypes"], entries, strict=True):
            cell = (
                "—" if not entry else f"{entry['patches'] / entry['seconds']:,.0f}; {entry['seconds']:.3f} s"
            )
            row += [cell] + ["n/a"] * (1 + (dtype in compile_dtypes)) + [""]
            if (mode, stride_at_224) == ("shared", 32) and entry:
                target += f"{dtype} {'yes' if entry['seconds'] < SHARED_STRIDE_32_SECONDS else 'no'} "
        if (mode, stride_at_224) == ("shared", 32):
            target = f"< {SHARED_STRIDE_32_SECONDS:g} s" + (f": {target.strip()}" if target else "")
        rows.append(row + [target])
    hardware = []
    for dtype in DTYPES:
        peak = ours.get(f"matmul_tflops/{dtype}")
        measured = "—" if peak is None else f"{peak:.3g} TFLOP/s"
        hardware.append([f"JAX {dtype} matmul {plan['matmul_size']}^3, best of 5", measured])
    for dtype in plan["dtypes"]:
        peak = ours.get(f"matmul_tflops/{dtype}")
        for name in ("forward", "stage1", "stage2"):
            gflop, rate = ours.get(f"{dtype}/{name}_gflop_img"), ours.get(f"{dtype}/{name}_img_s")
            if gflop is None or rate is None or not peak:
                hardware.append([f"scenecls {dtype} {name}", "—"])
                continue
            achieved = gflop * rate / 1e3
            hardware.append(
                [
                    f"scenecls {dtype} {name}: XLA GFLOP/img x img/s",
                    f"{gflop:.2f} GFLOP/img, {achieved:.3g} TFLOP/s = {100 * achieved / peak:.0f}% of the "
                    f"{dtype} matmul peak",
                ]
            )
    return header, rows, hardware


def section(plan: dict, ours: dict, peer: dict, started: datetime.datetime, seconds: float, argv) -> str:
    """The Markdown section: what ran where, the table, the hardware reference and any failures."""
    header, rows, hardware = table(plan, ours, peer)
    command = " ".join(["python experiments/benchmark.py --accelerator", *map(shlex.quote, argv)])
    failures = [
        f"- {name}: {r['error']}" for name, r in (("scenecls", ours), ("PyTorch", peer)) if "error" in r
    ]
    failures += [
        f"- PyTorch {k.rsplit('_error', 1)[0]}: {v}" for k, v in peer.items() if k.endswith("_error")
    ]
    lines = [
        ACCELERATOR_SECTION,
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M %Z} (took {seconds / 60:.1f} min).",
        "",
        f"- Device: {ours.get('device', '?')} (PyTorch: {peer.get('torch_device', '?')}); host: {machine()}.",
        f"- Versions: Python {platform.python_version()}, jax {ours.get('jax_version', '?')}, torch "
        f"{peer.get('torch_version', '?')}, torchvision {peer.get('torchvision_version', '?')}.",
        f"- Model: ResNet-50 (torchvision architecture, v1.5, random weights) + Inception head, "
        f"{plan['image_size']} px, batch {plan['batch_size']}, {NUM_CLASSES} classes; {plan['steps']} timed "
        f"steps after {plan['warmup']} warm-up steps, batch already in device memory (uint8, normalised "
        "inside the step). Stage 1 trains the head (no backbone backward); stage 2 the default "
        "`stage2.trainable` (Keras' last 30 layers: conv5_block2, conv5_block3 and the head, BatchNorm "
        "frozen); both read the loss every step. PyTorch: channels_last, autocast bfloat16, TF32 for "
        "float32, frozen part under `torch.no_grad()`, fused Adam on the same parameters; `torch.compile` "
        "compiles the model (default mode).",
        f"- Patch inference: `PatchClassifier.predict` on one synthetic {plan['photo_hw'][1]}x"
        f"{plan['photo_hw'][0]} photo (exact: one crop per patch, chunks of {plan['batch_size']}; shared: "
        "backbone once, head over every window), after a warm-up call; PyTorch has no patch engine (n/a).",
        "",
        markdown_table(header, rows),
        "",
        "\"scenecls / eager\" is scenecls' rate over PyTorch eager's (eager's time over scenecls' for "
        "the time to first step); targets are issue 16's for an H100/H200-class GPU.",
        "",
        "### Hardware reference",
        "",
        markdown_table(["what", "measured"], hardware),
    ]
    if failures:
        lines += ["", "### Failures", "", *failures]
    return "\n".join(lines) + "\n"


def _size(text: str) -> list[int]:
    """ "4000x3000" (width x height) -> [height, width]."""
    width, height = (int(v) for v in text.lower().split("x"))
    return [height, width]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="benchmark.py --accelerator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--photo", default="4000x3000", help="patch inference photo, WIDTHxHEIGHT")
    parser.add_argument("--patch-repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--torch-compile-dtypes", default="bfloat16", help='"" for none')
    parser.add_argument("--jax-timeout", type=float, default=300, help="seconds for the scenecls process")
    parser.add_argument("--torch-timeout", type=float, default=240, help="seconds for the PyTorch process")
    parser.add_argument(
        "--output", default=os.path.join(REPO, "docs", "benchmarks.md"), help="- : print only"
    )
    parser.add_argument("--workdir", help="keep the plan, the photo, each job's log and result here")
    parser.add_argument("--job", choices=["jax"], help="internal: run the scenecls measurement process")
    parser.add_argument("--plan", help="internal")
    parser.add_argument("--result", help="internal")
    args = parser.parse_args(argv)
    if args.job:
        jax_job(args.plan, args.result)
        return
    started, clock = datetime.datetime.now().astimezone(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scenecls_accel_") as scratch:
        tmp = args.workdir or scratch
        os.makedirs(tmp, exist_ok=True)
        plan = {
            "batch_size": args.batch,
            "image_size": args.image_size,
            "num_classes": NUM_CLASSES,
            "steps": args.steps,
            "warmup": args.warmup,
            "photo_hw": _size(args.photo),
            "photo": os.path.join(tmp, "photo.npy"),
            "patch_repeats": args.patch_repeats,
            "matmul_size": args.matmul_size,
            "dtypes": [d for d in args.dtypes.split(",") if d],
            "torch_compile_dtypes": [d for d in args.torch_compile_dtypes.split(",") if d],
        }
        print(f"Rendering the {args.photo} photo in {tmp}", flush=True)
        np.save(plan["photo"], synthetic.make_composite(*plan["photo_hw"], seed=0, unit=40)[0])
        plan_path = os.path.join(tmp, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        ours = run_job(os.path.abspath(__file__), "jax", plan_path, tmp, env={}, timeout=args.jax_timeout)
        peer = run_job(
            PEER, "accelerator", plan_path, tmp, env={"JAX_PLATFORMS": "cpu"}, timeout=args.torch_timeout
        )
    text = section(plan, ours, peer, started, time.perf_counter() - clock, argv)
    print("\n" + text)
    if args.output != "-":
        write_section(args.output, text)
        print(f"Wrote the section into {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
