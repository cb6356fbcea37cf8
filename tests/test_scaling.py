"""Data parallelism: 8 simulated devices and two processes reproduce the 1-device run.

The device count is fixed when jax starts (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), so
the multi-device runs are subprocesses running this file as a script (``_run``); the 1-device reference
runs in the test process. All runs use one prepared dataset and share a JAX compile cache.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # trains tiny runs end to end, or several processes (minutes in all)

TESTS = os.path.dirname(os.path.abspath(__file__))
# Summation order differs with the device count (gradients reduced across devices), nothing else:
# parameters after the tiny run's 10 steps agree to about 2e-6 (measured); metrics to float32 rounding.
PARAM_ATOL = 1e-5
METRIC_RTOL = 1e-4
PROB_ATOL = 1e-5
# XDG_CACHE_HOME of the subprocesses: their JAX compile cache, kept between test sessions.
CACHE_HOME = os.path.join(tempfile.gettempdir(), "scenecls-test-cache")


def _run(spec: dict) -> None:
    """One tiny training run, test evaluation and patch inference; process 0 saves the results.

    ``spec``: workdir, devices (expected global count), data_from (a workdir whose prepared data and
    source to reuse, or ""), and for a multi-process run coordinator, num_processes, process_id.
    """
    import jax

    from scenecls import parallel

    if spec.get("coordinator"):
        parallel.initialize_distributed(spec["coordinator"], spec["num_processes"], spec["process_id"])
    assert jax.device_count() == spec["devices"], jax.devices()

    from conftest import load_config

    from scenecls import train
    from scenecls.patches import PatchClassifier, run_inference
    from scenecls.workdir import inference

    workdir, source = spec["workdir"], os.path.join(spec["data_from"], "synthetic_source")
    config = load_config("tiny")
    # Streamed, every process count gets the same global batches; in memory, each process would shuffle
    # its own shard (a different order).
    config.data.in_memory = "false"
    if spec["data_from"] != workdir:
        config.data.prepared_dir = os.path.join(spec["data_from"], "prepared")
        config.data.source_dir = source
    metrics = train.train_and_evaluate(config, workdir)

    config.infer.inputs = os.path.join(
        source, "Cars", "cars_000[0-2].*"
    )  # 3 images: 2 rounds for 2 processes
    config.infer.output_dir = os.path.join(workdir, "infer")
    run_inference(config, workdir)
    shared = config.patch.copy_and_resolve_references()
    shared.mode = "shared"
    image = os.path.join(source, "Labs", sorted(os.listdir(os.path.join(source, "Labs")))[0])
    shared_result = PatchClassifier.from_workdir(workdir, shared).predict(image)
    params = inference.load_for_inference(workdir).variables["params"]
    if parallel.is_primary():
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
        np.savez(os.path.join(workdir, "params.npz"), **{jax.tree_util.keystr(k): v for k, v in flat})
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump({"metrics": metrics, "shared": shared_result}, f)


def _spawn(spec: dict, local_devices: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}",
        "XDG_CACHE_HOME": spec["cache_dir"],
        "PYTHONPATH": REPO,  # this checkout's scenecls, whatever is installed
    }
    return subprocess.Popen(
        [sys.executable, __file__, json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(processes: list[subprocess.Popen]) -> None:
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-5000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1-device reference (in process), 8 devices, and 2 processes x 2 devices, each its own workdir."""
    root = tmp_path_factory.mktemp("scaling")
    base = {"cache_dir": CACHE_HOME, "data_from": str(root / "one")}
    _run({**base, "workdir": str(root / "one"), "devices": 1})
    multi = [_spawn({**base, "workdir": str(root / "eight"), "devices": 8}, 8)]
    coordinator = f"127.0.0.1:{_free_port()}"
    two = {**base, "workdir": str(root / "two"), "devices": 4, "coordinator": coordinator, "num_processes": 2}
    multi += [_spawn({**two, "process_id": i}, 2) for i in range(2)]
    _wait(multi)
    return {name: str(root / name) for name in ("one", "eight", "two")}


def _load(workdir: str) -> tuple[dict, dict, dict]:
    with open(os.path.join(workdir, "result.json")) as f:
        result = json.load(f)
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    return dict(np.load(os.path.join(workdir, "params.npz"))), result, history


@pytest.mark.parametrize("name", ["eight", "two"])
def test_training_matches_one_device(runs, name):
    """Same global batch on 8 devices / 2 processes: same parameters, history and test metrics."""
    params, result, history = _load(runs[name])
    expected_params, expected, expected_history = _load(runs["one"])
    assert params.keys() == expected_params.keys()
    for key, value in expected_params.items():
        np.testing.assert_allclose(params[key], value, rtol=0, atol=PARAM_ATOL, err_msg=key)
    for stage, records in expected_history.items():
        for got, want in zip(history[stage], records, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert got[key] == pytest.approx(want[key], rel=METRIC_RTOL), (stage, key)
    assert result["metrics"]["accuracy"] == pytest.approx(expected["metrics"]["accuracy"], rel=METRIC_RTOL)
    assert result["metrics"]["num_examples"] == expected["metrics"]["num_examples"]


def _predictions(workdir: str) -> list[list[str]]:
    with open(os.path.join(workdir, "eval", "predictions.csv")) as f:
        return list(csv.reader(f))[1:]


@pytest.mark.parametrize("name", ["eight", "two"])
def test_evaluation_covers_each_test_example_once(runs, name):
    """Every test file exactly once, in the data's order, with the 1-device run's predictions."""
    from scenecls.data import builder

    with open(os.path.join(runs["one"], "config.json")) as f:
        data_config = json.load(f)["data"]
    import ml_collections

    prepared = builder.prepare(ml_collections.ConfigDict(data_config), runs["one"])
    rows, expected = _predictions(runs[name]), _predictions(runs["one"])
    files = [row[0] for row in rows]
    assert len(files) == len(set(files)) == sum(prepared.counts["test"])
    assert files == [row[0] for row in expected]
    for got, want in zip(rows, expected, strict=True):
        assert got[1:3] == want[1:3]  # true and predicted class
        np.testing.assert_allclose(np.float64(got[3:]), np.float64(want[3:]), atol=PROB_ATOL)


def _summary(workdir: str) -> list[dict[str, str]]:
    with open(os.path.join(workdir, "infer", "summary.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["eight", "two"])
def test_patch_inference_matches_one_device(runs, name):
    """Exact mode over a folder (images split between processes) and shared mode: the same patches."""
    rows, expected = _summary(runs[name]), _summary(runs["one"])
    assert [(r["file"], r["major"], r["secondary"]) for r in rows] == [
        (r["file"], r["major"], r["secondary"]) for r in expected
    ]
    for row in expected:
        with (
            open(os.path.join(runs["one"], "infer", f"{row['output']}.json")) as f,
            open(os.path.join(runs[name], "infer", f"{row['output']}.json")) as g,
        ):
            want, got = json.load(f), json.load(g)
        assert [p["class"] for p in got["patches"]] == [p["class"] for p in want["patches"]]
        np.testing.assert_allclose(
            [p["confidence"] for p in got["patches"]],
            [p["confidence"] for p in want["patches"]],
            atol=PROB_ATOL,
        )
    shared, want = _load(runs[name])[1]["shared"], _load(runs["one"])[1]["shared"]
    assert [p["class"] for p in shared["patches"]] == [p["class"] for p in want["patches"]]
    np.testing.assert_allclose(
        [p["confidence"] for p in shared["patches"]],
        [p["confidence"] for p in want["patches"]],
        atol=PROB_ATOL,
    )


def test_batch_size_must_divide_by_the_device_count():
    """The error names the config field and a fix (for an 8-device mesh)."""
    from scenecls import parallel

    parallel.check_divisible(16, "batch_size", 8)
    with pytest.raises(ValueError, match=r"config.eval_batch_size=12 is not divisible by the 8 devices"):
        parallel.check_divisible(12, "eval_batch_size", 8)


if __name__ == "__main__":
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["XDG_CACHE_HOME"], "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    sys.path.insert(0, TESTS)
    _run(json.loads(sys.argv[1]))
