"""What a newcomer sees: bars on a terminal, summaries, no library chatter; full logs in the workdir."""

import os
import pty
import re
import select
import subprocess
import sys

import pytest
from conftest import REPO

# The demo's CLI, made smaller so that it runs in well under a minute; every phase still runs.
DEMO = [
    sys.executable,
    "-m",
    "scenecls.main",
    "--config=configs/demo.py",
    "--mode=train",
    "--config.data.synthetic_per_class=20",
    "--config.stage1.epochs=1",
    "--config.stage2.epochs=1",
    "--config.infer.demo_composites=1",
]
# Each long phase's bar: (its label, total) as the bar prints "label: 100%|...| total/total".
PHASES = {
    "Writing synthetic scenes": 100,
    "Preparing data": 100,
    "stage1 epoch 1/1": 4,
    "stage2 epoch 1/1": 4,
    r"Evaluating \(test\)": 1,
    "Patch inference": 1,
}
CHATTER = ("I0000", "W0000", "E0000", "Downloading and preparing", "absl::InitializeLog", "xla_bridge")


def _run_in_pty(command: list[str], timeout: float = 600) -> tuple[int, str]:
    """Runs ``command`` with a terminal as stdin/stdout/stderr; returns (status, everything it printed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([controller], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError(f"no output for {timeout} s:\n{output.decode(errors='replace')[-3000:]}")
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        output += data
    os.close(controller)
    return process.wait(), output.decode(errors="replace")


@pytest.mark.slow
def test_demo_on_a_terminal_shows_bars_and_summaries_without_library_chatter(tmp_path):
    status, output = _run_in_pty([*DEMO, f"--workdir={tmp_path}"])
    assert status == 0, output[-3000:]
    for chatter in CHATTER:
        assert chatter not in output, f"{chatter!r} on the console:\n{output[:3000]}"
    assert "[A" not in output, "cursor-up redraws (nested or broken bars)"
    for label, total in PHASES.items():
        assert re.search(rf"{label}: 100%\|[^\r\n]*\| {total}/{total} ", output), (label, output[-3000:])
    assert re.search(r"stage1 epoch 1/1: loss [\d.]+ acc [\d.]+ \| val_loss [\d.]+ val_acc [\d.]+", output)
    assert "Evaluation on 15 test examples" in output
    with open(tmp_path / "log.txt") as f:
        log = f.read()
    assert "JAX devices" in log and "stage1 epoch 1/1 step 4/4" in log, "the full log is in the workdir"


@pytest.mark.slow
def test_demo_piped_has_summaries_and_no_bar_redraws(tmp_path):
    result = subprocess.run(
        [*DEMO, f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream and "\x1b[" not in stream, stream[:2000]
        for chatter in CHATTER:
            assert chatter not in stream
    assert re.search(r"stage2 epoch 1/1: loss [\d.]+ acc [\d.]+ \| val_loss", result.stdout)
    assert "Summary of" not in result.stdout  # one composite: no summary.csv
    assert "composite_0.png: Major:" in result.stdout


def test_verbosity_brings_library_logs_back_to_the_console(tmp_path):
    command = [
        sys.executable,
        "-m",
        "scenecls.main",
        "--config=configs/tiny.py",
        "--mode=synth",
        f"--workdir={tmp_path}",
    ]
    quiet = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    verbose = subprocess.run(
        [*command, "--verbosity=1"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "Synthetic dataset in" in quiet.stdout
    assert "JAX devices" not in quiet.stderr and "JAX devices" in verbose.stderr
    assert re.search(r"^I\d{4} ", verbose.stderr, re.MULTILINE), "absl's own format when verbose"
    with open(tmp_path / "log.txt") as f:
        assert f.read().count("JAX devices") == 2, "both runs log fully to the workdir"
