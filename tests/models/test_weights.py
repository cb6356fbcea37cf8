"""Pretrained-weight import: equivalence with Keras and torch references, strictness, errors.

Full-size ResNet-50s with random non-trivial weights (BatchNorm statistics
included) stand in for the ImageNet files, which need a network to fetch.
"""

import os
import shutil
import subprocess
import sys
import urllib.error

import h5py
import jax
import numpy as np
import pytest
import safetensors.torch
import tensorflow as tf
import torch
from conftest import REPO
from PIL import Image
from sklearn.datasets import load_sample_image

from scenecls.config import default_config
from scenecls.models import ResNet50, build_classifier, weights
from scenecls.models.preprocessing import preprocess
from scenecls.models.weights import cache
from scenecls.models.weights.strict import backbone_shapes

tf.config.set_visible_devices([], "GPU")
import tf_keras  # noqa: E402  (after hiding GPUs from TensorFlow)

WeightsError = weights.WeightsError
KERAS_NOTOP_COUNT = 23_587_712  # Keras' ResNet50(include_top=False).count_params(), BN statistics included.
INCEPTION_HEAD_COUNT_5 = 9_177_349
RELATIVE_TOLERANCE = 1e-4


def _random(kind: str, shape, fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """Random weights that keep a 50-layer network's activations O(1) and every statistic relevant."""
    draw = {
        "kernel": lambda: rng.normal(0.0, np.sqrt(1.0 / fan_in), shape),
        "scale": lambda: rng.uniform(0.7, 1.3, shape),
        "bias": lambda: rng.normal(0.0, 0.2, shape),
        "mean": lambda: rng.normal(0.0, 0.3, shape),
        "var": lambda: rng.uniform(0.5, 2.0, shape),
    }
    return draw[kind]().astype(np.float32)


def _randomize_keras(model, seed: int) -> None:
    """Gives every Keras weight a random value; conv1 is scaled down for caffe's [-124, 152] inputs."""
    rng = np.random.default_rng(seed)
    kinds = {"kernel": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}
    kinds |= {"moving_mean": "mean", "moving_variance": "var"}
    values = []
    for weight in model.weights:
        shape = weight.shape.as_list()
        value = _random(kinds[weight.name.split("/")[-1].split(":")[0]], shape, np.prod(shape[:-1]), rng)
        values.append(value / 50 if weight.name.startswith("conv1_conv/kernel") else value)
    model.set_weights(values)


def _relative_error(ours, reference) -> float:
    """max |ours - reference| / max |reference|."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two real photos and one noise image, RGB in [0, 255], 224x224."""
    noise = np.random.default_rng(0).uniform(0, 255, (224, 224, 3)).astype(np.float32)
    images = [_resized(load_sample_image(name), 224, 224) for name in ("china.jpg", "flower.jpg")]
    return np.stack(images + [noise])


@pytest.fixture(scope="module")
def keras_forward():
    return jax.jit(ResNet50(variant="keras").apply)


@pytest.fixture(scope="module")
def keras_notop(tmp_path_factory):
    """(Keras no-top model, its legacy HDF5 weight file)."""
    model = tf_keras.applications.ResNet50(weights=None, include_top=False)
    _randomize_keras(model, seed=1)
    path = tmp_path_factory.mktemp("keras") / "notop.h5"
    model.save_weights(str(path))
    return model, path


@pytest.fixture(scope="module")
def notop_variables(keras_notop):
    return weights.load_backbone(str(keras_notop[1]))


def test_keras_notop_matches_keras(keras_notop, notop_variables, keras_forward, photos):
    model, _ = keras_notop
    x = preprocess(photos, "caffe")
    error = _relative_error(keras_forward(notop_variables, x), model(x, training=False))
    odd = preprocess(_resized(load_sample_image("china.jpg"), 256, 320)[None], "caffe")
    odd_error = _relative_error(keras_forward(notop_variables, odd), model(odd, training=False))
    print(f"\nKeras notop max abs error / max |ref|: 224x224 {error:.2e}, 256x320 {odd_error:.2e}")
    assert error <= RELATIVE_TOLERANCE
    assert odd_error <= RELATIVE_TOLERANCE


def test_keras_with_top_backbone_matches_keras(tmp_path, keras_forward, photos):
    model = tf_keras.applications.ResNet50(weights=None, include_top=True)
    _randomize_keras(model, seed=2)
    model.save_weights(str(tmp_path / "top.h5"))
    backbone = tf_keras.Model(model.input, model.get_layer("conv5_block3_out").output)
    variables = weights.load_backbone(str(tmp_path / "top.h5"))
    x = preprocess(photos, "caffe")
    error = _relative_error(keras_forward(variables, x), backbone(x, training=False))
    print(f"\nKeras with-top max abs error / max |ref|: {error:.2e}")
    assert error <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_caffe_preprocessing_matches_keras(dtype):
    images = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3)).astype(dtype)
    expected = tf_keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(preprocess(images, "caffe"), expected, rtol=0, atol=1e-5)


def test_parameter_counts(notop_variables):
    assert sum(int(np.prod(shape)) for shape in backbone_shapes("keras").values()) == KERAS_NOTOP_COUNT
    assert sum(v.size for v in jax.tree.leaves(notop_variables)) == KERAS_NOTOP_COUNT
    classifier = build_classifier(default_config().model, num_classes=5)
    shapes = jax.eval_shape(
        classifier.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)
    )
    assert (
        sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"]["head"]))
        == INCEPTION_HEAD_COUNT_5
    )


# torchvision ResNet-50 v1.5 written in plain torch, with torchvision's module names.


class _Bottleneck(torch.nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out = 4 * width
        self.conv1 = torch.nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.conv3 = torch.nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, out, 1, stride, bias=False), torch.nn.BatchNorm2d(out)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + shortcut)


class _TorchResNet50(torch.nn.Module):
    """Returns the layer4 feature map (N, 2048, H/32, W/32); ``fc`` exists only for its state-dict keys."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.maxpool = torch.nn.MaxPool2d(3, 2, padding=1)
        in_channels = 64
        for stage, blocks in enumerate((3, 4, 6, 3)):
            width = 64 * 2**stage
            layers = []
            for block in range(blocks):
                layers.append(_Bottleneck(in_channels, width, 2 if stage > 0 and block == 0 else 1))
                in_channels = 4 * width
            setattr(self, f"layer{stage + 1}", torch.nn.Sequential(*layers))
        self.fc = torch.nn.Linear(2048, 1000)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@pytest.fixture(scope="module")
def torch_model():
    model = _TorchResNet50().eval()
    rng = np.random.default_rng(4)
    kinds = {"running_mean": "mean", "running_var": "var", "bias": "bias"}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            leaf = name.rsplit(".", 1)[-1]
            kind = kinds.get(leaf) or ("kernel" if tensor.ndim > 1 else "scale")
            tensor.copy_(torch.from_numpy(_random(kind, tuple(tensor.shape), np.prod(tensor.shape[1:]), rng)))
    return model


@pytest.fixture(scope="module")
def torch_files(torch_model, tmp_path_factory):
    """The reference's state dict as (.safetensors, .pth)."""
    directory = tmp_path_factory.mktemp("torch")
    safetensors.torch.save_file(torch_model.state_dict(), str(directory / "resnet50.safetensors"))
    torch.save(torch_model.state_dict(), directory / "resnet50.pth")
    return directory / "resnet50.safetensors", directory / "resnet50.pth"


def test_torchvision_matches_torch_reference(torch_model, torch_files, photos):
    variables = weights.load_backbone(str(torch_files[0]))
    x = preprocess(photos, "torch")
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    ours = jax.jit(ResNet50(variant="torchvision").apply)(variables, x)
    error = _relative_error(ours, reference.transpose(0, 2, 3, 1))
    print(f"\ntorchvision max abs error / max |ref|: {error:.2e}")
    assert error <= RELATIVE_TOLERANCE
    from_pth = weights.load_backbone(str(torch_files[1]))
    assert jax.tree.all(jax.tree.map(np.array_equal, from_pth, variables))


def test_weights_variant(torch_files, keras_notop):
    assert weights.weights_variant(weights.KERAS_IMAGENET) == "keras"
    assert weights.weights_variant(str(keras_notop[1])) == "keras"
    assert weights.weights_variant(str(torch_files[0])) == "torchvision"
    assert weights.weights_variant(str(torch_files[1])) == "torchvision"
    with pytest.raises(WeightsError, match="unknown weights source"):
        weights.weights_variant("weights.npz")


def test_torch_state_dict_prefix_and_extra_keys(torch_model):
    from scenecls.models.weights import torch_state
    from scenecls.models.weights.strict import assemble

    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    prefixed = torch_state.tensors_from_state_dict({f"module.{k}": v for k, v in state.items()})
    expected = backbone_shapes("torchvision")
    variables = assemble(prefixed, expected, "prefixed", ignore=torch_state.IGNORED)
    np.testing.assert_array_equal(
        variables["params"]["conv1_conv"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
    )
    # A ResNet-101-like extra block, a conv bias and a narrower conv1 are each reported with their names.
    state["layer3.6.conv1.weight"] = state["layer3.5.conv1.weight"]
    state["conv1.bias"] = np.zeros(64, np.float32)
    state["conv1.weight"] = np.zeros((32, 3, 7, 7), np.float32)
    with pytest.raises(WeightsError) as error:
        assemble(torch_state.tensors_from_state_dict(state), expected, "r101", ignore=torch_state.IGNORED)
    assert "3 problem(s)" in str(error.value)
    assert (
        "shape mismatch: params/conv1_conv/kernel (from conv1.weight): file (32, 3, 7, 7) as (7, 7, 3, 32) "
        "vs model (7, 7, 3, 64)" in str(error.value)
    )
    assert "extra: layer3.6.conv1.weight (256, 1024, 1, 1) as (1, 1, 1024, 256)" in str(error.value)
    assert "extra: conv1.bias (64,)" in str(error.value)


# Strictness and file errors.


def _edited_copy(source, destination, edit):
    """A copy of an HDF5 weight file with ``edit(h5py.File)`` applied."""
    shutil.copy(source, destination)
    with h5py.File(destination, "r+") as file:
        edit(file)
    return str(destination)


def _resize_conv1(file):
    del file["conv1_conv/conv1_conv/kernel:0"]
    file["conv1_conv"].create_dataset("conv1_conv/kernel:0", data=np.zeros((7, 7, 3, 32), np.float32))


def _drop_variance(file):
    layer = file["conv5_block3_3_bn"]
    del layer["conv5_block3_3_bn/moving_variance:0"]
    names = [n for n in layer.attrs["weight_names"] if "moving_variance" not in n]
    layer.attrs.create("weight_names", names, dtype=h5py.string_dtype())


def _add_layer(file):
    layer = file.create_group("conv6_block1_1_conv")
    layer.create_dataset("conv6_block1_1_conv/kernel:0", data=np.zeros((1, 1, 2048, 512), np.float32))
    layer.attrs.create("weight_names", ["conv6_block1_1_conv/kernel:0"], dtype=h5py.string_dtype())
    names = [*file.attrs["layer_names"], "conv6_block1_1_conv"]
    file.attrs.create("layer_names", names, dtype=h5py.string_dtype())


SHAPE_MISMATCH = "shape mismatch: params/conv1_conv/kernel (from conv1_conv/conv1_conv/kernel:0): "
SHAPE_MISMATCH += "file (7, 7, 3, 32) vs model (7, 7, 3, 64)"
MISSING = "missing: batch_stats/conv5_block3_3_bn/var (2048,)"
EXTRA = "extra: conv6_block1_1_conv/conv6_block1_1_conv/kernel:0 (1, 1, 2048, 512)"


@pytest.mark.parametrize(
    "edits, messages",
    [
        ((_resize_conv1,), (SHAPE_MISMATCH,)),
        ((_drop_variance,), (MISSING,)),
        ((_add_layer,), (EXTRA,)),
        ((_resize_conv1, _drop_variance, _add_layer), (SHAPE_MISMATCH, MISSING, EXTRA)),
    ],
    ids=["shape", "missing", "extra", "all"],
)
def test_strict_loading_lists_every_problem(keras_notop, tmp_path, edits, messages):
    path = _edited_copy(keras_notop[1], tmp_path / "edited.h5", lambda f: [edit(f) for edit in edits])
    with pytest.raises(WeightsError) as error:
        weights.load_backbone(path)
    message = str(error.value)
    assert message.startswith(f"{path} (keras ResNet-50): {len(messages)} problem(s):")
    for expected in messages:
        assert expected in message


def test_truncated_h5(keras_notop, tmp_path):
    path = tmp_path / "truncated.h5"
    shutil.copy(keras_notop[1], path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(WeightsError, match=f"^{path}: cannot read HDF5 file .*truncated"):
        weights.load_backbone(str(path))


@pytest.mark.parametrize(
    "name, reason",
    [
        ("corrupt.h5", "cannot read HDF5 file"),
        ("corrupt.safetensors", "cannot read safetensors"),
        ("corrupt.pth", "cannot read torch"),
    ],
)
def test_corrupt_files(tmp_path, name, reason):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(5).bytes(4096))
    with pytest.raises(WeightsError, match=f"^{path}: {reason}") as error:
        weights.load_backbone(str(path))
    assert "\n" not in str(error.value)


def test_wrong_architecture_h5(tmp_path):
    model = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(4, name="dense_a")])
    model.save_weights(str(tmp_path / "dense.h5"))
    with pytest.raises(
        WeightsError, match="wrong architecture, none of its 2 tensors fits .*dense_a/kernel:0"
    ):
        weights.load_backbone(str(tmp_path / "dense.h5"))


def test_h5_that_is_not_keras_weights(tmp_path):
    with h5py.File(tmp_path / "plain.h5", "w") as file:
        file["x"] = np.zeros(3)
    with pytest.raises(WeightsError, match="not a Keras weights file .no 'layer_names'"):
        weights.load_backbone(str(tmp_path / "plain.h5"))
    with h5py.File(tmp_path / "keras3.h5", "w") as file:
        file.create_group("layers")
        file.create_group("vars")
    with pytest.raises(WeightsError, match="Keras 3 '.weights.h5'.*model.save"):
        weights.load_backbone(str(tmp_path / "keras3.h5"))


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        weights.load_backbone(str(tmp_path / "absent.h5"))


# keras:imagenet: cache lookup and download, with the network replaced by fakes.


def _no_network(url, destination):
    raise urllib.error.URLError("no network")


def test_keras_imagenet_without_cache_or_network(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(cache, "download_url", _no_network)
    target = tmp_path / "keras" / "models" / cache.KERAS_RESNET50_NOTOP.name
    with pytest.raises(WeightsError) as error:
        weights.load_backbone("keras:imagenet")
    message = str(error.value)
    assert "no network" in message and f"place it at {target}" in message
    assert cache.KERAS_RESNET50_NOTOP.url in message and cache.KERAS_RESNET50_NOTOP.md5 in message
    assert not target.with_name(target.name + ".part").exists()


def test_keras_imagenet_bad_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(
        cache, "download_url", lambda url, destination: destination.write_bytes(b"not weights")
    )
    with pytest.raises(WeightsError, match="md5 .* expected 4d473c1dd8becc155b73f8504c6f6626"):
        weights.load_backbone("keras:imagenet")
    assert list((tmp_path / "models").iterdir()) == []


def test_keras_imagenet_uses_cached_file(keras_notop, notop_variables, tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(cache, "download_url", _no_network)
    assert cache.keras_cache_dir() == tmp_path / ".keras" / "models"
    cache.keras_cache_dir().mkdir(parents=True)
    (cache.keras_cache_dir() / cache.KERAS_RESNET50_NOTOP.name).symlink_to(keras_notop[1])
    variables = weights.load_backbone("keras:imagenet")
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, notop_variables))


def test_download_verifies_and_caches(tmp_path):
    remote = cache.RemoteFile("w.h5", "https://example.invalid/w.h5", md5="0cc175b9c0f1b6a831c399e269772661")
    downloads = []

    def fake_download(url, destination):
        downloads.append(url)
        destination.write_bytes(b"a")

    assert cache.cached_file(remote, tmp_path / "models", fake_download).read_bytes() == b"a"
    assert cache.cached_file(remote, tmp_path / "models", fake_download) == tmp_path / "models" / "w.h5"
    assert downloads == [remote.url]


# Convert once to orbax; merge into a classifier.


def test_convert_round_trip_and_cli(keras_notop, notop_variables, torch_files, tmp_path):
    converted = weights.convert(str(keras_notop[1]), tmp_path / "keras_ckpt")
    assert weights.weights_variant(str(converted)) == "keras"
    restored = weights.load_backbone(str(converted))
    assert jax.tree.all(jax.tree.map(np.array_equal, restored, notop_variables))
    with pytest.raises(WeightsError, match="already exists"):
        weights.convert(str(keras_notop[1]), converted)

    convert = [
        sys.executable,
        "-m",
        "scenecls.main",
        "--config=configs/default.py",
        "--mode=convert",
        f"--config.pretrained={torch_files[0]}",
        f"--workdir={tmp_path / 'torch_run'}",
    ]
    done = subprocess.run(convert, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"--config.pretrained={tmp_path / 'torch_run' / 'backbone'}" in done.stdout
    assert weights.weights_variant(str(tmp_path / "torch_run" / "backbone")) == "torchvision"
    again = subprocess.run(convert, cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in again.stderr.splitlines() if line.startswith("scenecls: error:")]
    assert again.returncode == 1 and len(errors) == 1 and "already exists; move it away" in errors[0]

    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a converted backbone checkpoint"):
        weights.load_backbone(str(tmp_path / "empty"))


def _classifier_variables(model_config, fill: float):
    """Classifier variables filled with a constant (merging only looks at structure and shapes)."""
    classifier = build_classifier(model_config, num_classes=5)
    shapes = jax.eval_shape(
        classifier.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    )
    return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype), shapes)


def test_merge_backbone(notop_variables, tiny_config):
    variables = _classifier_variables(default_config().model, fill=0.5)
    merged = weights.merge_backbone(variables, notop_variables)
    assert jax.tree.all(
        jax.tree.map(
            np.array_equal, {c: merged[c]["backbone"] for c in ("params", "batch_stats")}, notop_variables
        )
    )
    assert jax.tree.all(jax.tree.map(np.array_equal, merged["params"]["head"], variables["params"]["head"]))
    with pytest.raises(
        WeightsError,
        match="shape mismatch: params/conv1_conv/kernel .* file .7, 7, 3, 64. vs model .7, 7, 3, 8.",
    ):
        weights.merge_backbone(_classifier_variables(tiny_config.model, fill=0.0), notop_variables)
