"""Kill -9 fault injection: SIGKILL tiny training runs at random points, resume, compare with a clean run.

Each trial trains configs/tiny.py through the CLI, SIGKILLs it at seeded random moments (after a random
delay, or the moment orbax's temporary directory of the n-th checkpoint write appears), reruns
the same command until it completes, and compares history.json, eval/metrics.json and the final best
parameters with an uninterrupted run. Prints a table of faults, runs and outcomes.
Usage: ``python experiments/fault_injection.py [--trials 5] [--kills 3] [--seed 0]``.
"""

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ("--config.stage1.epochs=3", "--config.stage2.epochs=2", "--config.infer.demo_composites=0")
TMP_MARKER = "orbax-checkpoint-tmp"
_TIMING_KEYS = ("images_per_s", "seconds")


class Fault(NamedTuple):
    """A SIGKILL ``at`` seconds after start ("time"), or during the ``at``-th checkpoint write of the run."""

    kind: str  # "time" | "checkpoint_write"
    at: float


def train_command(workdir: str) -> list[str]:
    """The CLI training command of the tiny config."""
    return [
        sys.executable,
        "-m",
        "scenecls.main",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        "--mode=train",
        *OVERRIDES,
    ]


def _checkpoints_being_written(workdir: str) -> set[str]:
    """The temporary step directories orbax is writing now (``best_stage1/3.orbax-checkpoint-tmp``)."""
    root = os.path.join(workdir, "checkpoints")
    try:
        return {
            f"{sub}/{name}"
            for sub in os.listdir(root)
            for name in os.listdir(os.path.join(root, sub))
            if TMP_MARKER in name
        }
    except OSError:  # not created yet, or a directory vanished while listing
        return set()


def run_once(workdir: str, fault: Fault | None, env: dict[str, str], timeout: float = 600) -> str:
    """Runs the training command once with ``fault``; returns "completed", "killed ..." or "failed ..."."""
    log = open(workdir + ".log", "a")
    process = subprocess.Popen(train_command(workdir), cwd=REPO, env=env, stdout=log, stderr=log)
    start, writes = time.monotonic(), set()
    try:
        while process.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                process.kill()
                process.wait()
                return "hung (timeout)"
            current = _checkpoints_being_written(workdir) if fault else set()
            writes |= current
            if fault and (elapsed >= fault.at if fault.kind == "time" else len(writes) >= fault.at):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return f"killed writing {min(current)}" if current else "killed"
            time.sleep(0.002)
    finally:
        log.close()
    return "completed" if process.returncode == 0 else f"failed (rc {process.returncode})"


def run_with_faults(
    workdir: str, faults: list[Fault], env: dict[str, str], max_resumes: int = 3
) -> list[str]:
    """Injects each fault into a fresh attempt, then reruns until the training completes; returns outcomes."""
    outcomes = [run_once(workdir, fault, env) for fault in faults]
    for _ in range(max_resumes):
        if "completed" in outcomes[-1:]:
            break
        outcomes.append(run_once(workdir, None, env))
    return outcomes


def differences(reference: str, workdir: str) -> list[str]:
    """What differs between two finished workdirs: history, test metrics and final best parameters."""
    problems = []
    for name in ("history.json", os.path.join("eval", "metrics.json")):
        with open(os.path.join(reference, name)) as f, open(os.path.join(workdir, name)) as g:
            problems += [f"{name}: {p}" for p in _compare(json.load(f), json.load(g), "")]
    problems += [f"best params: {p}" for p in _compare(_best_params(reference), _best_params(workdir), "")]
    return problems


def _best_params(workdir: str) -> Any:
    from scenecls.workdir import checkpoints, inference

    return checkpoints.best_variables(workdir, inference.final_stage(workdir))


def _compare(a: Any, b: Any, path: str) -> list[str]:
    """Differences between two JSON-like trees of numbers/arrays (relative tolerance 1e-5)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        return [p for k in a if k not in _TIMING_KEYS for p in _compare(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _compare(x, y, f"{path}[{i}]")]
    if isinstance(a, str) or isinstance(b, str):
        return [] if a == b else [f"{path}: {a!r} != {b!r}"]
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-7):
        return [f"{path}: values differ"]
    return []


def subprocess_env(cache_home: str) -> dict[str, str]:
    """Environment of the subprocesses: a shared JAX compile cache, quiet logs."""
    return {**os.environ, "XDG_CACHE_HOME": cache_home, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}


def random_faults(rng: random.Random, kills: int, max_delay: float) -> list[Fault]:
    """``kills`` faults: half at random times up to ``max_delay`` s, half in one of the first 8 writes."""
    kinds = rng.sample(["checkpoint_write", "time"] * math.ceil(kills / 2), kills)
    return [
        Fault(kind, round(rng.uniform(0, max_delay), 2) if kind == "time" else rng.randint(1, 8))
        for kind in kinds
    ]


def main() -> None:
    """Runs the trials and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per trial")
    parser.add_argument("--max-delay", type=float, default=40.0, help="latest timed kill, s after start")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="fault_injection_")
    env = subprocess_env(os.path.join(root, "cache"))
    reference = os.path.join(root, "reference")
    print(f"Uninterrupted reference run: {run_once(reference, None, env)}  (logs and workdirs in {root})")
    counts: Counter = Counter()
    rows = []
    for trial in range(args.trials):
        workdir = os.path.join(root, f"trial{trial}")
        faults = random_faults(rng, args.kills, args.max_delay)
        outcomes = run_with_faults(workdir, faults, env)
        problems = differences(reference, workdir) if outcomes[-1] == "completed" else ["did not complete"]
        for fault, outcome in zip(faults, outcomes, strict=False):
            counts[(fault.kind, outcome.split("/")[0])] += 1  # "killed writing best_stage1", "completed", ...
        verdict = "identical to reference" if not problems else "; ".join(problems[:3])
        rows.append((trial, " ".join(f"{f.kind}@{f.at}" for f in faults), " -> ".join(outcomes), verdict))
    print(f"\n{'trial':>5}  {'faults':<60}  {'runs':<50}  result")
    for trial, faults_text, outcomes_text, verdict in rows:
        print(f"{trial:>5}  {faults_text:<60}  {outcomes_text:<50}  {verdict}")
    print("\nFaults injected (kind, outcome of that attempt): count")
    for (kind, outcome), n in sorted(counts.items()):
        print(f"  {kind:<17} {outcome:<28} {n}")
    same = sum(row[3] == "identical to reference" for row in rows)
    print(f"\n{same}/{len(rows)} interrupted trials ended identical to the uninterrupted run.")


if __name__ == "__main__":
    main()
