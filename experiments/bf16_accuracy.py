"""bfloat16 against float32 on the demo: the same run trained and evaluated in each compute dtype.

``python experiments/bf16_accuracy.py [--workdir DIR]`` trains ``configs/demo.py`` (patch demo off) with
``config.model.dtype=float32`` and then ``bfloat16``, on the same synthetic data prepared once, and prints
each run's test metrics and their difference in points (issue 16: within 1 point). Same seed, so the only
difference between the runs is the compute dtype (and what its rounding does to the trajectory).

``--evaluate WORKDIR`` instead evaluates one trained run's best checkpoint on its test split with each
compute dtype (the same weights; only evaluation's arithmetic differs).
"""

import argparse
import importlib.util
import os
import tempfile
import time

from absl import logging

from scenecls import train
from scenecls.models.precision import COMPUTE_DTYPES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = tuple(COMPUTE_DTYPES)  # float32, bfloat16


def demo_config():
    """configs/demo.py, loaded as --config loads it."""
    spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def evaluate_in_each_dtype(workdir: str) -> dict[str, dict]:
    """Test metrics of ``workdir``'s best checkpoint (calibration aside) computed in each compute dtype."""
    from scenecls.data import builder, pipeline
    from scenecls.evaluation import metrics, predict_split
    from scenecls.models import build_classifier, lookup_variant
    from scenecls.workdir import load_for_inference

    trained = load_for_inference(workdir)
    config = trained.config
    batches = list(pipeline.eval_batches(builder.prepare(config.data, workdir), "test", config))
    results = {}
    for dtype in DTYPES:
        config.model.dtype = dtype
        model = build_classifier(config.model, len(trained.classes))
        preprocessing = lookup_variant(config.model.variant).preprocessing
        predictions = predict_split(model, trained.variables, batches, preprocessing)
        results[dtype] = metrics.compute_metrics(predictions["labels"], predictions["probs"], trained.classes)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", help="keep both runs here (default: a temp dir)")
    parser.add_argument("--evaluate", help="a trained workdir: evaluate it in each dtype instead")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    if args.evaluate:
        _print_comparison(evaluate_in_each_dtype(args.evaluate))
        return
    with tempfile.TemporaryDirectory(prefix="scenecls_bf16_") as scratch:
        root = args.workdir or scratch
        metrics = {}
        for dtype in DTYPES:
            config = demo_config()
            config.model.dtype = dtype
            config.infer.demo_composites = 0
            config.data.prepared_dir = os.path.join(root, "prepared")  # shared: prepared once
            start = time.perf_counter()
            metrics[dtype] = train.train_and_evaluate(config, os.path.join(root, dtype))
            print(f"{dtype}: trained and evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    _print_comparison(metrics)


def _print_comparison(metrics: dict[str, dict]) -> None:
    names = [k for k, v in metrics["float32"].items() if isinstance(v, float) and k in metrics["bfloat16"]]
    print(f"\n{'test metric':24s}{'float32':>10s}{'bfloat16':>10s}{'points':>9s}")
    for name in names:
        f32, bf16 = metrics["float32"][name], metrics["bfloat16"][name]
        print(f"{name:24s}{f32:10.4f}{bf16:10.4f}{100 * (bf16 - f32):+9.2f}")


if __name__ == "__main__":
    main()
