"""The PyTorch peer a GPU user would pick, measured for ``experiments/benchmark.py --accelerator``.

torchvision's ResNet-50 (v1.5, the architecture of scenecls' ``torchvision`` variant) plus ``InceptionHead``,
a torch mirror of ``scenecls.models.heads.InceptionHead`` (the same layers, shapes and activations; pooling
and logits in float32). Written the way a GPU user would: channels_last, ``torch.autocast`` bfloat16 for
the bfloat16 rows (TF32 matmuls and convolutions for float32, as JAX's default precision on a GPU), frozen
BatchNorm (eval mode), the stage's frozen part under ``torch.no_grad()`` (stage 1: the whole backbone, no
backward; stage 2: everything in front of the first trainable block), fused Adam on exactly the parameters
scenecls' stage trains (its ``trainable`` rules mapped onto torchvision's names through scenecls' own
weight-name table), each eager and through ``torch.compile``. The step reads its loss every step, as
scenecls' trainer reads its metrics.

Run by the benchmark in its own process (JAX on the CPU there, so the accelerator's memory is torch's):
``python experiments/torch_peer.py --plan PLAN.json --result OUT.json``.
"""

import argparse
import json
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from accelerator import accelerator_config
from torch import nn

from scenecls.models import block_names, build_classifier
from scenecls.models.weights.torch_state import tensors_from_state_dict
from scenecls.train import optim

_MEAN = (0.485, 0.456, 0.406)  # torchvision's preprocessing (scenecls' "torch" kind)
_STD = (0.229, 0.224, 0.225)


class InceptionHead(nn.Module):
    """scenecls' InceptionHead in torch: parallel 'same' convs with ReLU -> concat -> global average pool ->
    dropout -> dense logits, the last three in float32."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: int = 128,
        kernel_sizes: tuple[int, ...] = (1, 3, 5),
        dropout_rate: float = 0.5,
    ):
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, filters, k, padding="same") for k in self.kernel_sizes
        )
        self.dropout = nn.Dropout(dropout_rate)
        self.logits = nn.Linear(filters * len(self.kernel_sizes), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.relu(branch(features)) for branch in self.branches], dim=1)
        x = x.float().mean(dim=(2, 3))
        with torch.autocast(x.device.type, enabled=False):
            return self.logits(self.dropout(x))


def head_for(model_config: Any, num_classes: int, in_channels: int = 2048) -> InceptionHead:
    """The torch head of ``config.model`` (an inception head)."""
    return InceptionHead(
        in_channels,
        num_classes,
        model_config.head_filters,
        tuple(model_config.head_kernel_sizes),
        model_config.dropout_rate,
    )


def backbone_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """A torchvision ResNet as (scenecls point, module) in forward order: the stem, then each bottleneck
    block under its Keras name (``layer4[1]`` is ``conv5_block2``)."""
    stem = nn.Sequential(backbone.conv1, backbone.bn1, nn.ReLU(inplace=True), backbone.maxpool)
    blocks = [("stem", stem)]
    for stage in range(1, 5):
        for index, block in enumerate(getattr(backbone, f"layer{stage}")):
            blocks.append((f"conv{stage + 1}_block{index + 1}", block))
    return blocks


class Peer(nn.Module):
    """The classifier split at a stage's gradient boundary: ``frozen`` runs under no_grad."""

    def __init__(self, frozen: nn.Module, tail: nn.Module, head: nn.Module):
        super().__init__()
        self.frozen, self.tail, self.head = frozen, tail, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.frozen(images)
        return self.head(self.tail(x))


class StageSpec(NamedTuple):
    """What a stage trains, in torchvision's names: computed once, before any timing."""

    trainable_keys: frozenset[str]  # backbone parameters
    head_trains: bool
    boundary: str | None  # scenecls' gradient boundary: a block name, "output" or None
    count: int  # trainable parameters, as scenecls counts them


def stage_spec(backbone: nn.Module, config: Any, stage: str, num_classes: int) -> StageSpec:
    """scenecls' ``stage`` (``optim.stage_labels`` of its rules, BatchNorm frozen unless the stage trains it)
    mapped onto ``backbone``'s torchvision names through scenecls' weight-name table."""
    model = build_classifier(config.model, num_classes)
    size = config.image_size
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    labels = optim.stage_labels(shapes, config[stage])
    names = set(optim.trainable_names(labels))
    count = sum(int(np.prod(s.shape)) for path, s in _named(shapes["params"]) if path in names)
    state = {key: value.detach().cpu().numpy() for key, value in backbone.state_dict().items()}
    keys = frozenset(
        t.source
        for t in tensors_from_state_dict(state)
        if t.path and t.path[0] == "params" and f"backbone/{t.path[1]}/{t.path[2]}" in names
    )
    boundary = optim.gradient_boundary(labels, block_names(config.model.stage_sizes))
    return StageSpec(keys, any(name.startswith("head/") for name in names), boundary, count)


def apply_spec(backbone: nn.Module, head: nn.Module, spec: StageSpec) -> tuple[Peer, list[nn.Parameter]]:
    """(the model split at the stage's gradient boundary, its trainable parameters); freezes the rest.

    Raises ValueError when the parameter count differs from scenecls'."""
    parameters = dict(backbone.named_parameters())
    for key, parameter in parameters.items():
        parameter.requires_grad_(key in spec.trainable_keys)
    trainable = [parameters[key] for key in sorted(spec.trainable_keys)]
    trainable += list(head.parameters()) if spec.head_trains else []
    count = sum(p.numel() for p in trainable)
    if count != spec.count:
        raise ValueError(f"torch trains {count:,} parameters, scenecls {spec.count:,}")
    blocks = backbone_blocks(backbone)
    points = [name for name, _ in blocks]
    boundary = spec.boundary
    split = 0 if boundary is None else len(blocks) if boundary == "output" else points.index(boundary)
    frozen = nn.Sequential(*(module for _, module in blocks[:split]))
    tail = nn.Sequential(*(module for _, module in blocks[split:]))
    return Peer(frozen, tail, head), trainable


def _named(params: Any) -> list[tuple[str, Any]]:
    return [
        (optim.path_name([k.key for k in path]), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (channels_last) -> normalised float32, as scenecls' "torch" preprocessing."""
    mean = torch.tensor(_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(_STD, device=images.device).view(1, 3, 1, 1) * 255
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)


def _train_step(model: Callable, optimizer, batch: dict, weights: torch.Tensor, bf16: bool) -> Callable:
    """One optimisation step on ``batch``; returns the loss (read on the host, as scenecls' trainer does)."""

    def step() -> float:
        with torch.autocast(batch["image"].device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(_preprocess(batch["image"]))
        losses = F.cross_entropy(logits.float(), batch["label"], reduction="none")
        loss = (weights[batch["label"]] * losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _forward(model: Callable, batch: dict, bf16: bool) -> Callable:
    def forward() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(batch["image"].device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(_preprocess(batch["image"]))

    return forward


def _rate(
    fn: Callable, steps: int, warmup: int, images: int, device: torch.device, since: float
) -> tuple[float, float]:
    """(seconds from ``since`` to the first call's result, images/s over ``steps`` calls after ``warmup``
    more)."""
    fn()
    _sync(device)
    first = time.perf_counter() - since
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return first, steps * images / (time.perf_counter() - start)


def measure(plan: dict, config: Any, make_backbone: Callable[[], nn.Module], record: Callable) -> None:
    """Forward, stage-1 and stage-2 img/s and the time to first stage-1 step, for each dtype in
    ``plan["dtypes"]``, eager and (for ``plan["torch_compile_dtypes"]``) compiled; ``record(key, value)``
    stores each figure as it is measured (an error message where a measurement failed)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    size, batch_size, classes = config.image_size, plan["batch_size"], plan["num_classes"]
    rng = np.random.default_rng(0)
    batch = {
        "image": torch.from_numpy(rng.integers(0, 256, (batch_size, 3, size, size), dtype=np.uint8))
        .to(device)
        .contiguous(memory_format=torch.channels_last),
        "label": torch.from_numpy(rng.integers(0, classes, (batch_size,))).to(device),
    }
    specs = {stage: stage_spec(make_backbone(), config, stage, classes) for stage in ("stage1", "stage2")}
    for mode in ("eager", "compile"):  # every eager figure first: compilation takes the most time
        for dtype in plan["dtypes"]:
            if mode == "compile" and dtype not in plan["torch_compile_dtypes"]:
                continue
            for stage, spec in specs.items():
                prefix = f"{dtype}/{mode}"
                try:
                    for key, value in _stage_figures(
                        plan, config, make_backbone, spec, mode, dtype, stage, batch
                    ):
                        record(f"{prefix}/{key}", value)
                except Exception as e:  # a failed compile (no C compiler, say) becomes the row's text
                    record(f"{prefix}/{stage}_error", f"{type(e).__name__}: {str(e).strip().splitlines()[0]}")
                    traceback.print_exc()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def _stage_figures(plan, config, make_backbone, spec: StageSpec, mode: str, dtype: str, stage: str, batch):
    """(key, value) figures of one stage in one mode and dtype, from a freshly built model."""
    device, batch_size, bf16 = batch["image"].device, plan["batch_size"], dtype == "bfloat16"
    start = time.perf_counter()
    torch.manual_seed(0)
    backbone = make_backbone().to(device, memory_format=torch.channels_last)
    head = head_for(config.model, plan["num_classes"]).to(device, memory_format=torch.channels_last)
    peer, trainable = apply_spec(backbone, head, spec)
    peer.eval()
    head.train()  # dropout; every BatchNorm stays in eval mode (frozen)
    optimizer = torch.optim.Adam(
        trainable, lr=config[stage].learning_rate, eps=1e-7, fused=device.type == "cuda"
    )
    model = torch.compile(peer) if mode == "compile" else peer
    weights = torch.ones(plan["num_classes"], device=device)
    step = _train_step(model, optimizer, batch, weights, bf16)
    first, rate = _rate(step, plan["steps"], plan["warmup"], batch_size, device, start)
    yield f"{stage}_img_s", rate
    yield f"{stage}_trainable", spec.count
    if stage == "stage1":  # built from scratch: the time to first step
        yield "first_step_s", first
        head.eval()
        forward = _forward(model, batch, bf16)
        _, rate = _rate(forward, plan["steps"], plan["warmup"], batch_size, device, time.perf_counter())
        yield "forward_img_s", rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", default="accelerator", help="the benchmark's job name (one job)")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    results: dict[str, Any] = {}

    def record(key: str, value: Any) -> None:  # written at once: a job stopped at its time limit keeps them
        results[key] = value
        print(f"{key}: {value}", flush=True)
        with open(args.result, "w") as out:
            json.dump(results, out, indent=2)

    record("torch_version", torch.__version__)
    record("torch_device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    try:
        import torchvision
    except Exception as e:  # e.g. a torchvision build for another torch
        record("error", f"torchvision not importable: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
        return
    record("torchvision_version", torchvision.__version__)
    measure(plan, accelerator_config(plan), lambda: torchvision.models.resnet50(weights=None), record)


if __name__ == "__main__":
    main()
