"""Which XLA:CPU options and compute dtypes speed up scenecls' forward pass and train steps on this machine.

Runs ``experiments/bench_train.py`` (forward, stage-1 and stage-2 steps of the full model) once per
variant, each in a fresh process with its own ``XLA_FLAGS``, repeating the round ``--rounds`` times in
interleaved order so machine noise hits every variant alike, and prints the best images/s of each.
Usage: ``python experiments/xla_options.py [--rounds 2] [--steps 3]``.
"""

import argparse
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
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
)
PASSES = ("forward", "stage1", "stage2")


def measure(flags: str, dtype: str, steps: int) -> dict[str, float]:
    """images/s of each pass from one bench_train.py process (NaN where it failed)."""
    env = {**os.environ, "XLA_FLAGS": flags}
    command = [sys.executable, os.path.join(HERE, "bench_train.py"), "--steps", str(steps), "--dtype", dtype]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    rates = {name: float("nan") for name in PASSES}
    for name, rate in re.findall(r"^\s+(\w+)\s+([\d.]+) images/s", result.stdout, re.MULTILINE):
        rates[name] = float(rate)
    if result.returncode:
        print(f"  ({flags or dtype}: failed: {result.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    best = {name: dict.fromkeys(PASSES, float("nan")) for name, _, _ in VARIANTS}
    for round_index in range(args.rounds):
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for name, flags, dtype in order:
            rates = measure(flags, dtype, args.steps)
            best[name] = {p: float(np.fmax(best[name][p], rates[p])) for p in PASSES}
            print(f"round {round_index + 1}: {name:20s} " + "  ".join(f"{p} {rates[p]:5.1f}" for p in PASSES))
    base = best["default"]
    print(f"\nBest of {args.rounds} rounds, images/s (ratio to default), ResNet-50 + head, 224 px, batch 32:")
    print(f"{'variant':22s}" + "".join(f"{p:>16s}" for p in PASSES))
    for name, flags, dtype in VARIANTS:
        cells = "".join(f"{best[name][p]:9.1f} ({best[name][p] / base[p]:4.2f})" for p in PASSES)
        print(f"{name:22s}{cells}   {flags or ('dtype=' + dtype if dtype != 'float32' else '')}")


if __name__ == "__main__":
    main()
