"""experiments/benchmark.py --accelerator: the PyTorch peer mirrors scenecls (head, trained parameters) and
the whole benchmark dry-runs on a CPU with TensorFlow blocked."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from scenecls.models import InceptionHead as FlaxInceptionHead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import accelerator  # noqa: E402
import benchmark  # noqa: E402
import torch_peer  # noqa: E402

NUM_CLASSES = 5
# Parameters, by hand: the head's three convs (1x1, 3x3, 5x5; 2048 -> 128, with biases) and its dense layer
# (384 -> 5); one conv5 block's convs (no biases in torchvision's ResNet-50).
HEAD_PARAMETERS = 2048 * 128 * (1 + 9 + 25) + 3 * 128 + 384 * NUM_CLASSES + NUM_CLASSES
CONV5_BLOCK_CONV_PARAMETERS = 2048 * 512 + 9 * 512 * 512 + 512 * 2048


def _torch_resnet50():
    """tests/models/test_weights.py's plain-torch twin of torchvision's ResNet-50 (torchvision's names)."""
    spec = importlib.util.spec_from_file_location(
        "weights_twin", os.path.join(REPO, "tests/models/test_weights.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._TorchResNet50()


def _plan(**overrides) -> dict:
    plan = {
        "batch_size": 2,
        "image_size": 64,
        "num_classes": NUM_CLASSES,
        "steps": 1,
        "warmup": 0,
        "dtypes": ["float32"],
        "torch_compile_dtypes": [],
    }
    return {**plan, **overrides}


def test_torch_head_mirrors_the_flax_head():
    """Same parameters (count and shape per layer) and, with the Flax head's weights copied in, the same
    logits."""
    config = accelerator.accelerator_config(_plan())
    flax_head = FlaxInceptionHead(NUM_CLASSES, config.model.head_filters, config.model.head_kernel_sizes)
    features = np.random.default_rng(0).standard_normal((2, 7, 7, 2048)).astype(np.float32)
    params = flax_head.init(jax.random.PRNGKey(0), jnp.asarray(features))["params"]
    head = torch_peer.head_for(config.model, NUM_CLASSES).eval()
    flax_count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    assert sum(p.numel() for p in head.parameters()) == flax_count == HEAD_PARAMETERS
    with torch.no_grad():
        for k, branch in zip(config.model.head_kernel_sizes, head.branches, strict=True):
            kernel = np.asarray(params[f"branch_{k}x{k}"]["kernel"])  # HWIO
            assert tuple(branch.weight.shape) == kernel.transpose(3, 2, 0, 1).shape
            branch.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            branch.bias.copy_(torch.from_numpy(np.array(params[f"branch_{k}x{k}"]["bias"])))
        dense = np.asarray(params["logits"]["kernel"])
        assert tuple(head.logits.weight.shape) == dense.T.shape
        head.logits.weight.copy_(torch.from_numpy(dense.T.copy()))
        head.logits.bias.copy_(torch.from_numpy(np.array(params["logits"]["bias"])))
        ours = head(torch.from_numpy(features.transpose(0, 3, 1, 2).copy())).numpy()
    theirs = np.asarray(flax_head.apply({"params": params}, jnp.asarray(features)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_peer_trains_the_parameters_scenecls_trains():
    """Stage 1: the head alone, the whole backbone under no_grad; stage 2: conv5_block2/3's convolutions
    (BatchNorm frozen) and the head, backprop from conv5_block2 (layer4[1]) on."""
    config = accelerator.accelerator_config(_plan())
    backbone = _torch_resnet50()
    head = torch_peer.head_for(config.model, NUM_CLASSES)
    spec = torch_peer.stage_spec(backbone, config, "stage1", NUM_CLASSES)
    peer, trainable = torch_peer.apply_spec(backbone, head, spec)
    assert spec.count == sum(p.numel() for p in trainable) == HEAD_PARAMETERS and len(peer.tail) == 0
    assert not any(p.requires_grad for p in backbone.parameters())

    spec = torch_peer.stage_spec(backbone, config, "stage2", NUM_CLASSES)
    peer, trainable = torch_peer.apply_spec(backbone, head, spec)
    names = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert names == {f"layer4.{block}.conv{conv}.weight" for block in (1, 2) for conv in (1, 2, 3)}
    assert peer.tail[0] is backbone.layer4[1] and len(peer.tail) == 2
    assert (
        spec.count == sum(p.numel() for p in trainable) == 2 * CONV5_BLOCK_CONV_PARAMETERS + HEAD_PARAMETERS
    )


@pytest.mark.slow  # ResNet-50 train steps in torch on the CPU
def test_peer_measures_every_stage_on_cpu():
    """The peer's measurement loop runs (eager float32 and autocast bfloat16) and records each figure."""
    config = accelerator.accelerator_config(_plan())
    results = {}
    plan = _plan(dtypes=["float32", "bfloat16"])
    torch_peer.measure(plan, config, _torch_resnet50, results.__setitem__)
    for dtype in plan["dtypes"]:
        for key in ("forward_img_s", "stage1_img_s", "stage2_img_s", "first_step_s"):
            assert results[f"{dtype}/eager/{key}"] > 0, (dtype, key, results)
        assert results[f"{dtype}/eager/stage1_trainable"] == HEAD_PARAMETERS


def test_write_section_replaces_only_its_own_section(tmp_path):
    heading = benchmark.ACCELERATOR_SECTION
    path = tmp_path / "benchmarks.md"
    path.write_text(f"# Benchmarks\n\nabove\n\n{heading}\n\nold\n\n### Sub\n\nold\n\n## Next\n\nbelow\n")
    benchmark.write_section(str(path), f"{heading}\n\nnew\n")
    assert path.read_text() == f"# Benchmarks\n\nabove\n\n{heading}\n\nnew\n\n## Next\n\nbelow\n"
    fresh = tmp_path / "fresh.md"
    fresh.write_text("# Benchmarks\n")
    benchmark.write_section(str(fresh), f"{heading}\n\nnew\n")
    assert fresh.read_text() == f"# Benchmarks\n\n{heading}\n\nnew\n"


@pytest.mark.slow  # compiles ResNet-50's steps and patch engines on the CPU (a few minutes)
def test_accelerator_dry_run_without_tensorflow(tmp_path):
    """The whole --accelerator run at dry-run sizes, with tensorflow, tensorflow_datasets and tf_keras
    blocked in every process: scenecls' figures are all measured and the section lands in the docs file."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n\n\nclass Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'tf_keras'):\n"
        "            raise ImportError(f'blocked: {name}')\n\n\n"
        "sys.meta_path.insert(0, Blocker())\n"
    )
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    workdir = tmp_path / "work"
    command = [
        sys.executable,
        os.path.join(REPO, "experiments", "benchmark.py"),
        "--accelerator",
        *("--batch", "2", "--image-size", "64", "--photo", "128x96", "--steps", "1", "--warmup", "0"),
        *(
            "--matmul-size",
            "128",
            "--patch-repeats",
            "1",
            "--dtypes",
            "float32",
            "--torch-compile-dtypes",
            "",
        ),
        *("--output", str(docs), "--workdir", str(workdir)),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), REPO]), "JAX_PLATFORMS": "cpu"}
    subprocess.run(command, check=True, env=env, cwd=REPO, timeout=1800)
    with open(workdir / "accelerator.py.jax.json") as f:
        ours = json.load(f)
    assert "error" not in ours
    for key in ("forward_img_s", "stage1_img_s", "stage2_img_s", "first_step_s", "forward_gflop_img"):
        assert ours[f"float32/{key}"] > 0, key
    assert {ours[f"float32/patches_{m}_{s}"]["patches"] > 0 for m, s in accelerator.PATCH_MODES} == {True}
    text = docs.read_text()
    assert (
        text.startswith("# Benchmarks\n\n" + benchmark.ACCELERATOR_SECTION) and "Forward pass (img/s)" in text
    )
