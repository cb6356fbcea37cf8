"""What test-time augmentation does to test accuracy, and calibration to ECE: ``eval.tta`` off, "flip",
"flip_crops", each with the run's fitted temperature.

``python experiments/tta_effect.py [--seeds 3] [--workdir DIR]`` trains the demo and the from-scratch digits
run of ``views_accuracy.py`` once per seed (calibration on), then evaluates each trained model on its test
split with every TTA setting, and prints test accuracy, ECE before and after calibration and the fitted
temperature as mean ± standard deviation over the seeds (the temperature is fitted without TTA).
"""

import argparse
import os
import statistics
import tempfile

from views_accuracy import demo_config, demo_source, digits_config, write_digits

from scenecls.config import TTA
from scenecls.evaluation import evaluate
from scenecls.train import train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="scenecls_tta_") as scratch:
        root = args.workdir or scratch
        digits = write_digits(os.path.join(root, "digits_source"))
        datasets = {"demo": demo_config, "digits": lambda: digits_config(digits)}
        for name, make_config in datasets.items():
            for seed in range(args.seeds):
                config = make_config()
                config.seed = seed
                config.data.prepared_dir = os.path.join(root, f"{name}_prepared")
                if name == "demo":
                    config.data.synthetic_per_class = 0
                    config.data.source_dir = demo_source(root)
                workdir = os.path.join(root, f"{name}_seed{seed}")
                train_and_evaluate(config, workdir)
                for tta in TTA:
                    config.eval.tta = tta
                    metrics = evaluate(config, workdir)
                    results.setdefault((name, tta), []).append(
                        (
                            metrics["accuracy"],
                            metrics["ece_uncalibrated"],
                            metrics["ece"],
                            metrics["temperature"],
                        )
                    )
                    print(
                        f"{name} seed={seed} tta={tta or 'off'}: accuracy {metrics['accuracy']:.4f}",
                        flush=True,
                    )
    print(
        "\n| data | eval.tta | test accuracy | ECE uncalibrated | ECE calibrated | temperature | runs |"
        "\n|---|---|---|---|---|---|---|"
    )
    for (name, tta), values in results.items():
        accuracy, before, after, temperature = zip(*values, strict=True)
        print(
            f"| {name} | {tta or 'off'} | {_spread(accuracy)} | {_spread(before)} | {_spread(after)} | "
            f"{_spread(temperature)} | {len(values)} |",
            flush=True,
        )


def _spread(values) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {deviation:.4f}"


if __name__ == "__main__":
    main()
