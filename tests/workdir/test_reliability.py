"""Reliability: workdir lock, corrupt checkpoints, write failures, format versions, config checks, kill -9.

The kill -9 test trains the tiny config through the CLI, SIGKILLs it at seeded random points (one during a
checkpoint write) and checks the resumed run ends identical to an uninterrupted one.
"""

import errno
import glob
import importlib.util
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import REPO, load_config

from scenecls import config as config_lib
from scenecls.workdir import checkpoints, inference, run_files
from scenecls.workdir import lock as workdir_lock

CLASSES = ("a", "b")


# --- workdir lock ---------------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    workdir = str(tmp_path)
    with workdir_lock.locked(workdir):
        with pytest.raises(workdir_lock.WorkdirLockedError) as raised:
            with workdir_lock.locked(workdir):
                pass
        message = str(raised.value)
        assert message.startswith(f"{workdir} is in use by pid {os.getpid()} on host {socket.gethostname()}")
        assert "\n" not in message
    with workdir_lock.locked(workdir):  # released on exit
        pass


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    workdir = str(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom scenecls.workdir.lock import locked\n"
            f"with locked({workdir!r}):\n    print('held', flush=True)\n    time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by pid {holder.pid} on host"):
            with workdir_lock.locked(workdir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdir_lock.locked(workdir):  # the kernel dropped the dead holder's lock
        pass


def test_cli_refuses_a_locked_workdir_in_one_line(tmp_path):
    workdir = str(tmp_path)
    with workdir_lock.locked(workdir):
        result = subprocess.run(
            [sys.executable, "-m", "scenecls.main", "--config=configs/tiny.py", f"--workdir={workdir}"]
            + ["--mode=prepare"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"scenecls: error: {workdir} is in use by pid {os.getpid()} on host ")
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "prepared"))


# --- corrupt checkpoints --------------------------------------------------------------------------------


def _tree(step: int) -> dict:
    return {"params": {"w": np.arange(300, dtype=np.float32) * step, "b": np.full((7,), step, np.float32)}}


def _two_checkpoints(workdir: str) -> str:
    """Saves steps 1 and 2 into the latest manager; returns the directory of step 2."""
    manager = checkpoints.latest_manager(workdir)
    for step in (1, 2):
        checkpoints.save(manager, step, _tree(step), {"stage": "stage1", "step": step})
    return os.path.join(workdir, "checkpoints", "latest", "2")


def _data_files(step_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(step_dir, "state", "d", "*")))


def _truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def _flip_byte(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated array data": lambda d: _truncate(_data_files(d)[0]),
    "one flipped byte in array data": lambda d: _flip_byte(_data_files(d)[0]),
    "deleted array data": lambda d: os.remove(_data_files(d)[0]),
    "deleted tree metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "garbage json metadata": lambda d: open(os.path.join(d, "meta", "metadata"), "w").write("\x00garbage"),
    "truncated ocdbt manifest": lambda d: _truncate(os.path.join(d, "state", "manifest.ocdbt")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    workdir = str(tmp_path)
    DAMAGE[damage](_two_checkpoints(workdir))
    manager = checkpoints.latest_manager(workdir)
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_latest(manager)
    assert restored.step == 1 and restored.meta == {"stage": "stage1", "step": 1}
    np.testing.assert_array_equal(restored.state["params"]["w"], _tree(1)["params"]["w"])
    assert any("latest/2" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    checkpoints.save(manager, 2, _tree(2), {"stage": "stage1", "step": 2})  # the damaged step is replaced
    assert checkpoints.restore_latest(checkpoints.latest_manager(workdir)).step == 2


def test_restore_into_a_target_uses_its_structure(tmp_path):
    workdir = str(tmp_path)
    _two_checkpoints(workdir)
    target = {"params": {"w": np.zeros(300, np.float32), "b": np.zeros(7, np.float32)}}
    restored = checkpoints.restore_latest(checkpoints.latest_manager(workdir), lambda meta, version: target)
    assert restored.step == 2 and restored.state["params"]["b"][0] == 2


def test_half_written_checkpoint_is_ignored_and_cleaned_up(tmp_path):
    workdir = str(tmp_path)
    _two_checkpoints(workdir)
    tmp_dir = os.path.join(workdir, "checkpoints", "latest", "3.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(tmp_dir, "state"))
    open(os.path.join(tmp_dir, "state", "_METADATA"), "w").write('{"trunc')
    restored = checkpoints.restore_latest(checkpoints.latest_manager(workdir))
    assert restored.step == 2
    assert not os.path.exists(tmp_dir)


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    workdir = str(tmp_path)
    step_dir = _two_checkpoints(workdir)
    DAMAGE["truncated array data"](step_dir)
    DAMAGE["truncated array data"](step_dir.replace("latest/2", "latest/1"))
    with pytest.raises(checkpoints.CorruptCheckpointError, match=r"none of the checkpoints \[2, 1\]"):
        checkpoints.restore_latest(checkpoints.latest_manager(workdir))
    assert checkpoints.restore_latest(checkpoints.latest_manager(str(tmp_path / "empty"))) is None


def test_corrupt_best_checkpoint_is_a_workdir_error(tmp_path, tiny_config):
    workdir = str(tmp_path)
    run_files.write_run_files(workdir, tiny_config, CLASSES)
    checkpoints.save(checkpoints.best_manager(workdir, "stage2"), 4, _tree(4), {"stage": "stage2"})
    _flip_byte(_data_files(os.path.join(workdir, "checkpoints", "best_stage2", "4"))[0])
    with pytest.raises(checkpoints.WorkdirError, match="best_stage2/4: "):
        inference.load_for_inference(workdir)


# --- format versions ------------------------------------------------------------------------------------


def test_newer_workdir_format_is_refused_and_older_loads(tmp_path, tiny_config):
    workdir = str(tmp_path)
    run_files.write_run_files(workdir, tiny_config, CLASSES)
    with open(os.path.join(workdir, "run.json")) as f:
        assert json.load(f) == {"format_version": checkpoints.FORMAT_VERSION}
    os.remove(os.path.join(workdir, "run.json"))  # a workdir of before run.json: version 1
    assert run_files.read_run_config(workdir)[1] == CLASSES
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"format_version": checkpoints.FORMAT_VERSION + 1}, f)
    with pytest.raises(checkpoints.WorkdirError, match="written by a newer scenecls"):
        run_files.read_run_config(workdir)
    with pytest.raises(checkpoints.WorkdirError, match="written by a newer scenecls"):
        run_files.write_run_files(workdir, tiny_config, CLASSES)


def test_newer_checkpoint_format_is_refused_not_skipped(tmp_path):
    workdir = str(tmp_path)
    meta_path = os.path.join(_two_checkpoints(workdir), "meta", "metadata")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["_integrity"]["format_version"] = checkpoints.FORMAT_VERSION + 1
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(checkpoints.WorkdirError, match="latest/2: written by a newer scenecls"):
        checkpoints.restore_latest(checkpoints.latest_manager(workdir))


# --- write failures -------------------------------------------------------------------------------------


def test_failed_checkpoint_write_is_one_line_and_leaves_no_partial_step(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    workdir = str(tmp_path)
    _two_checkpoints(workdir)

    async def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomicity.async_path, "rename", disk_full)  # the commit of a fully written step
    manager = checkpoints.latest_manager(workdir)
    with pytest.raises(checkpoints.WriteError) as raised:
        checkpoints.save(manager, 3, _tree(3), {"stage": "stage1", "step": 3})
    assert (
        str(raised.value)
        == f"cannot write checkpoint {workdir}/checkpoints/latest/3: No space left on device"
    )
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["1", "2"]
    assert checkpoints.restore_latest(checkpoints.latest_manager(workdir)).step == 2


def test_failed_run_file_write_keeps_the_old_file(tmp_path, tiny_config, monkeypatch):
    workdir = str(tmp_path)
    run_files.write_run_files(workdir, tiny_config, CLASSES)
    before = open(os.path.join(workdir, "config.json")).read()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(
        checkpoints.WriteError, match=f"cannot write {workdir}/run.json: Read-only file system"
    ):
        run_files.write_run_files(workdir, tiny_config, CLASSES)
    monkeypatch.undo()
    assert open(os.path.join(workdir, "config.json")).read() == before
    assert not glob.glob(os.path.join(workdir, "*.tmp"))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs mount (needs root and mount rights; skipped otherwise)."""
    mount_point = str(tmp_path / "tmpfs")
    os.makedirs(mount_point)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount_point], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
    yield mount_point
    subprocess.run(["umount", "-l", mount_point], check=False)


def test_full_then_read_only_filesystem_fails_cleanly(tiny_tmpfs, tiny_config):
    workdir = tiny_tmpfs
    manager = checkpoints.latest_manager(workdir)
    checkpoints.save(manager, 1, _tree(1), {"step": 1})
    big = {"params": {"w": np.random.default_rng(0).random(1_000_000)}}  # 8 MB of incompressible data
    with pytest.raises(checkpoints.WriteError, match="latest/2: No space left on device"):
        checkpoints.save(manager, 2, big, {"step": 2})
    assert os.listdir(os.path.join(workdir, "checkpoints", "latest")) == ["1"]
    subprocess.run(["mount", "-o", "remount,ro", workdir], check=True)
    with pytest.raises(checkpoints.WriteError, match="Read-only file system"):
        run_files.write_run_files(workdir, tiny_config, CLASSES)
    with pytest.raises(checkpoints.WriteError, match="latest/3: Read-only file system"):
        checkpoints.save(manager, 3, _tree(3), {"step": 3})
    restored = checkpoints.restore_latest(checkpoints.latest_manager(workdir))
    assert restored.step == 1 and restored.meta == {"step": 1}


# --- config validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "default", "demo", "baseline"])
def test_shipped_configs_are_valid(name):
    config_lib.validate(load_config(name))


@pytest.mark.parametrize(
    "field,value",
    [
        ("batch_size", 0),
        ("eval_batch_size", -1),
        ("image_size", 16),
        ("data.split", (0.7, 0.2, 0.2)),
        ("data.split", (1.2, -0.1, -0.1)),
        ("data.split", (0.5, 0.5)),
        ("model.head", "transformer"),
        ("model.variant", "v2"),
        ("model.dtype", "float64"),
        ("model.dropout_rate", 1.0),
        ("patch.mode", "fast"),
        ("patch.stride", 0),
        ("patch.secondary_threshold", 1.5),
        ("early_stopping.metric", "loss"),
        ("stage1.epochs", -1),
        ("stage2.learning_rate", 0.0),
        ("stage1.learning_rate", float("nan")),
        ("reduce_lr.factor", 0.0),
        ("stage2.trainable", ("^head/", "(")),
        ("cache_features.views", -1),
        ("cache_features.dtype", "float16"),
        ("patch.stride", 300),
    ],
)
def test_invalid_config_fields_are_named(tiny_config, field, value):
    section, _, key = field.rpartition(".")
    with tiny_config.unlocked():
        (tiny_config[section] if section else tiny_config)[key] = value
    with pytest.raises(ValueError, match=f"^config.{field}") as raised:
        config_lib.validate(tiny_config)
    assert "\n" not in str(raised.value)


# --- kill -9 fault injection ----------------------------------------------------------------------------


def _fault_injection():
    spec = importlib.util.spec_from_file_location(
        "fault_injection", os.path.join(REPO, "experiments", "fault_injection.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILLs at seeded random moments, one during a checkpoint write; reruns end where a clean run does."""
    fi = _fault_injection()
    # A compile cache shared by the subprocesses (and later sessions): only the first run compiles.
    env = fi.subprocess_env(os.path.join(tempfile.gettempdir(), "scenecls-test-cache"))
    reference, interrupted = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    assert fi.run_once(reference, None, env) == "completed", open(reference + ".log").read()[-3000:]
    rng = random.Random(8)
    # The n-th checkpoint write of a run (latest or best), then seconds after its start. The run writes at
    # least 5 latest checkpoints (one per epoch), so two write faults of at most the 3rd and 2nd write always
    # hit, whatever the machine's speed; the timed one may come after the run completed.
    faults = [
        fi.Fault("checkpoint_write", rng.randint(2, 3)),
        fi.Fault("checkpoint_write", rng.randint(1, 2)),
        fi.Fault("time", round(rng.uniform(5, 15), 1)),
    ]
    outcomes = fi.run_with_faults(interrupted, faults, env)
    assert outcomes[-1] == "completed", (outcomes, open(interrupted + ".log").read()[-3000:])
    assert [o.startswith("killed writing ") for o in outcomes[:2]] == [True, True], outcomes
    assert fi.differences(reference, interrupted) == []
