"""Which XLA:CPU options and compute dtypes speed up scenecls' forward pass and train steps on this machine.

Measures evaluation (forward), stage-1 and stage-2 train steps of the full model (ResNet-50 + Inception
head, 224 px, batch 32, random weights and images) once per variant, each in a fresh process with its own
``XLA_FLAGS``, repeating the round ``--rounds`` times in alternating order so machine noise hits every
variant alike, and prints the best images/s of each. Usage: ``python experiments/xla_options.py
[--rounds 2] [--steps 3] [--only NAME,NAME]``.

Measured on the 2-core AMD EPYC development machine (Zen 3, AVX2, no AVX-512; one round, 2 steps), images/s
forward / stage 1 / stage 2: default 10.2 / 8.3 / 6.0; oneDNN dots 9.8 / 8.1 / 6.2; oneDNN custom calls
10.8 / 9.0 / 6.8; XNNPACK 9.6 / 8.2 / 5.9; YNNPACK conv+dot 9.6 / 8.8 / 6.0; fast math 9.6 / 9.0 / 6.2;
bfloat16 compute 9.3 / 8.5 / 6.1. Every difference is within this machine's run-to-run noise (about 10%:
fast math, which cannot change convolutions, moved stage 1 by 9%), so the defaults stay.

On an Intel Xeon with AVX512-BF16 and AMX (2 cores, heavily shared; two rounds, 3 steps; ``--only default,
bfloat16 compute,...``), bfloat16 was slower than float32 on both train steps in each round (0.68-0.82x) and
inside the noise on the forward pass (0.83x, 1.21x); with oneDNN flags no steadier. Figures in
docs/benchmarks.md ("bfloat16 against float32 on a CPU"); they decide ``config.model.dtype="auto"`` on CPUs
(``scenecls.models.precision.BF16_PAYS_ON_NATIVE_CPU``).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from benchmark import machine, run_steps

from scenecls.config import default_config
from scenecls.evaluation import predict_split
from scenecls.models import build_classifier
from scenecls.train import initial_variables, setup_stage

# (name, XLA_FLAGS, config.model.dtype)
VARIANTS = (
    ("default", "", "float32"),
    ("oneDNN dots", "--xla_cpu_use_onednn=true", "float32"),
    ("oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true", "float32"),
    ("XNNPACK", "--xla_cpu_use_xnnpack=true", "float32"),
    (
        "YNNPACK conv+dot",
        "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot",
        "float32",
    ),
    ("fast math", "--xla_cpu_enable_fast_math=true", "float32"),
    ("bfloat16 compute", "", "bfloat16"),
    ("bfloat16 + oneDNN dots", "--xla_cpu_use_onednn=true", "bfloat16"),
    ("bfloat16 + oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true", "bfloat16"),
)
PASSES = ("forward", "stage1", "stage2")


def child(dtype: str, steps: int) -> dict[str, float]:
    """images/s of each pass in this process (its XLA_FLAGS were set by the parent)."""
    config = default_config()
    config.model.dtype = dtype
    num_classes, size, batch_size = 5, config.image_size, config.batch_size
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, num_classes, (batch_size,)).astype(np.int32),
        "mask": np.ones((batch_size,), bool),
        "file": np.array([""] * batch_size),
    }
    variables = initial_variables(config, num_classes)
    model = build_classifier(config.model, num_classes)
    predict_split(model, variables, [batch], "caffe")  # warm-up
    rates = {
        "forward": batch_size * steps / _seconds(predict_split, model, variables, [batch] * steps, "caffe")
    }
    for stage in ("stage1", "stage2"):
        setup = setup_stage(config, variables, stage, num_classes)
        train_batch = {"image": batch["image"], "label": batch["label"]}
        state, _, _ = run_steps(setup.state, setup.step, [train_batch], jnp.ones((num_classes,)))  # warm-up
        _, images, seconds = run_steps(state, setup.step, [train_batch] * steps, jnp.ones((num_classes,)))
        rates[stage] = images / seconds
        del state
    jax.clear_caches()
    return rates


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(flags: str, dtype: str, steps: int) -> dict[str, float]:
    """images/s of each pass from a fresh process with ``XLA_FLAGS=flags`` (NaN where it failed)."""
    env = {**os.environ, "XLA_FLAGS": flags}
    command = [sys.executable, __file__, "--child", dtype, "--steps", str(steps)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        print(f"  ({flags or dtype}: failed: {result.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return {name: float("nan") for name in PASSES}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--child", help="internal: measure in this process with this compute dtype")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only.split(",")]
    if "default" not in [v[0] for v in variants]:
        variants.insert(0, VARIANTS[0])  # the reference of every ratio
    print(f"Machine: {machine()}", flush=True)
    best = {name: dict.fromkeys(PASSES, float("nan")) for name, _, _ in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for name, flags, dtype in order:
            rates = measure(flags, dtype, args.steps)
            best[name] = {p: float(np.fmax(best[name][p], rates[p])) for p in PASSES}
            print(f"round {round_index + 1}: {name:30s} " + "  ".join(f"{p} {rates[p]:5.1f}" for p in PASSES))
    base = best["default"]
    print(f"\nBest of {args.rounds} rounds, images/s (ratio to default), ResNet-50 + head, 224 px, batch 32:")
    print(f"{'variant':32s}" + "".join(f"{p:>16s}" for p in PASSES))
    for name, flags, dtype in variants:
        cells = "".join(f"{best[name][p]:9.1f} ({best[name][p] / base[p]:4.2f})" for p in PASSES)
        print(f"{name:32s}{cells}   {flags or ('dtype=' + dtype if dtype != 'float32' else '')}")


if __name__ == "__main__":
    main()
