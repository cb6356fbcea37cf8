"""Trains and evaluates a list of configs, then tabulates their test metrics.

Example (the paper's versions on your data)::

    python experiments/run_configs.py --root=runs/paper \
        --configs=experiments/paper_versions.py:v1,experiments/paper_versions.py:v2 \
        -- --config.data.source_dir=/data/campus --config.pretrained=keras:imagenet

Everything after ``--`` is passed to every run. Each run lives in
``<root>/<config name>`` and is resumed if it exists.
"""

import argparse
import json
import os
import re
import subprocess
import sys

COLUMNS = ("accuracy", "macro_f1", "weighted_f1", "top2_accuracy", "auc_ovr")


def run_name(config: str) -> str:
    """A workdir name for a config spec such as ``experiments/paper_versions.py:v2``."""
    base, _, arg = config.partition(":")
    name = os.path.splitext(os.path.basename(base))[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}_{arg}" if arg else name)


def table(rows: list[tuple[str, dict]]) -> str:
    """A fixed-width table of the metrics of each run."""
    lines = [f"{'run':<28}" + "".join(f"{c:>14}" for c in COLUMNS)]
    for name, metrics in rows:
        cells = "".join(
            f"{metrics[c]:>14.4f}" if isinstance(metrics.get(c), float) else f"{'-':>14}" for c in COLUMNS
        )
        lines.append(f"{name:<28}{cells}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", required=True, help="comma-separated config files (file.py or file.py:arg)"
    )
    parser.add_argument("--root", required=True, help="parent directory of the runs' workdirs")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rows, failed = [], []
    for config in args.configs.split(","):
        name = run_name(config)
        workdir = os.path.join(args.root, name)
        command = [
            sys.executable,
            "-m",
            "scenecls.main",
            f"--config={config}",
            f"--workdir={workdir}",
            "--mode=train",
            *extra,
        ]
        print("$", " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
            continue
        with open(os.path.join(workdir, "eval", "metrics.json")) as f:
            rows.append((name, json.load(f)))
    print(table(rows))
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
