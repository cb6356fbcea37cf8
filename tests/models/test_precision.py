"""Compute dtype: "auto" resolves in one place, and bfloat16 keeps parameters, statistics, logits and the loss
in float32 and trains as well as float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenecls import config as config_lib
from scenecls.data import synthetic
from scenecls.models import build_classifier, lookup_variant, resolve_dtype
from scenecls.models.precision import cpu_flags
from scenecls.models.preprocessing import preprocess
from scenecls.train import setup_stage
from scenecls.train.stage import init_variables

NUM_CLASSES = len(synthetic.CLASSES)


@pytest.mark.parametrize(
    "name, platform, flags, pays, expected",
    [
        ("float32", "gpu", (), True, "float32"),  # an explicit dtype is kept everywhere
        ("bfloat16", "cpu", (), False, "bfloat16"),
        ("auto", "gpu", (), False, "bfloat16"),
        ("auto", "tpu", (), False, "bfloat16"),
        ("auto", "cpu", ("avx2", "amx_bf16"), True, "bfloat16"),
        ("auto", "cpu", ("avx512f", "avx512_bf16"), True, "bfloat16"),
        ("auto", "cpu", ("avx2", "avx512f"), True, "float32"),  # no native bfloat16
        ("auto", "cpu", ("amx_bf16", "avx512_bf16"), False, "float32"),  # native, but measured slower
    ],
)
def test_resolve_dtype(name, platform, flags, pays, expected):
    assert resolve_dtype(name, platform=platform, flags=flags, bf16_pays_on_cpu=pays) == expected


def test_resolve_dtype_rejects_unknown_names():
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16", platform="cpu")


def test_auto_is_the_default_and_valid():
    config = config_lib.default_config()
    assert config.model.dtype == "auto"
    config_lib.validate(config)
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="config.model.dtype"):
        config_lib.validate(config)


def test_cpu_flags_reads_the_flags_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\nbugs\t\t: spectre\n")
    assert cpu_flags(str(path)) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.slow  # two stage-2 steps compiled, one per dtype
def test_bfloat16_computes_in_bfloat16_but_keeps_float32_where_it_matters(tiny_config):
    """Activations are bfloat16; parameters, BatchNorm statistics (updated by a step), logits and the loss
    are float32, and the statistics agree with a float32 model's to bfloat16 precision."""
    tiny_config.stage2.update(trainable=("^head/", "^backbone/conv5_block1_"), train_batchnorm=True)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, (8,)).astype(np.int32),
    }
    variables = init_variables(tiny_config.model, NUM_CLASSES, 64, seed=0)
    stats = {}
    for dtype in ("float32", "bfloat16"):
        tiny_config.model.dtype = dtype
        stage = setup_stage(tiny_config, variables, "stage2", NUM_CLASSES)
        state, metrics = stage.step(stage.state, batch, jax.random.PRNGKey(0), jnp.ones(NUM_CLASSES))
        for leaf in jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state)):
            assert leaf.dtype != jnp.bfloat16
        assert metrics["loss"].dtype == jnp.float32
        model = build_classifier(tiny_config.model, NUM_CLASSES)
        images = preprocess(batch["image"], stage.preprocessing)
        trained = {"params": state.params, "batch_stats": state.batch_stats}
        assert model.apply(trained, images, method="features").dtype == dtype
        assert model.apply(trained, images).dtype == jnp.float32
        stats[dtype] = state.batch_stats["backbone"]["conv5_block1_1_bn"]
    for name in ("mean", "var"):
        f32, bf16 = np.asarray(stats["float32"][name]), np.asarray(stats["bfloat16"][name])
        np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.05 * np.abs(f32).max())


def _scenes(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(NUM_CLASSES, size=count).astype(np.int32)
    images = np.stack([synthetic.render_scene(synthetic.CLASSES[c], size, size, rng) for c in labels])
    return images, labels


def _stage1_accuracy(config, dtype: str, train, test, epochs: int) -> float:
    """Held-out accuracy after a stage-1 run (the trainer's setup_stage and step) on in-memory scenes."""
    config.model.dtype = dtype
    variables = init_variables(config.model, NUM_CLASSES, config.image_size, config.seed)
    stage = setup_stage(config, variables, "stage1", NUM_CLASSES)
    state, size = stage.state, config.batch_size
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(train[1]))
        for i in range(0, len(order) - size + 1, size):
            batch = {"image": train[0][order[i : i + size]], "label": train[1][order[i : i + size]]}
            state, _ = stage.step(state, batch, jax.random.PRNGKey(epoch), jnp.ones(NUM_CLASSES))
    model = build_classifier(config.model, NUM_CLASSES)
    images = preprocess(test[0], lookup_variant(config.model.variant).preprocessing)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
    return float(np.mean(np.argmax(logits, -1) == test[1]))


@pytest.mark.slow  # renders 520 scenes and trains two stage-1 runs
def test_bfloat16_stage1_reaches_float32_accuracy(tiny_config):
    """A bfloat16 stage-1 run on the tiny config ends within noise of float32: within two standard errors
    of the difference of two accuracies on this test set, and both well above chance."""
    tiny_config.update(batch_size=16, seed=0)
    tiny_config.stage1.learning_rate = 3e-3
    train, test = _scenes(320, 64, seed=1), _scenes(200, 64, seed=2)
    accuracy = {dtype: _stage1_accuracy(tiny_config, dtype, train, test, epochs=4) for dtype in DTYPE_PAIR}
    p, n = accuracy["float32"], len(test[1])
    noise = 2 * np.sqrt(2 * p * (1 - p) / n)
    assert min(accuracy.values()) > 2 / NUM_CLASSES, accuracy
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= noise, (accuracy, noise)


DTYPE_PAIR = ("float32", "bfloat16")
