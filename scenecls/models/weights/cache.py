"""Finds Keras' published ImageNet ResNet-50 file in the Keras cache, downloading it if needed."""

import dataclasses
import hashlib
import os
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

from absl import logging

from scenecls.models.weights.strict import WeightsError

DOWNLOAD_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file Keras downloads into its cache, with the checksum Keras publishes for it."""

    name: str
    url: str
    md5: str


KERAS_RESNET50_NOTOP = RemoteFile(
    name="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    url="https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    md5="4d473c1dd8becc155b73f8504c6f6626",
)


def keras_cache_dir() -> Path:
    """Keras' download folder: ``$KERAS_HOME/models``, by default ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def download_url(url: str, destination: Path) -> None:
    """Copies ``url`` to ``destination``, giving up on a connection silent for ``DOWNLOAD_TIMEOUT_S``."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out)


def cached_file(remote: RemoteFile, cache_dir: Path, download: Callable[[str, Path], None]) -> Path:
    """``cache_dir/remote.name``, downloaded with ``download`` and checksum-verified when absent.

    Raises a ``WeightsError`` that says which file to place where when the
    download fails or its checksum is wrong.
    """
    target = cache_dir / remote.name
    if target.is_file():
        if _md5(target) != remote.md5:
            logging.warning("%s: md5 differs from Keras' published %s; using it anyway", target, remote.md5)
        return target
    partial = target.with_name(target.name + ".part")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        logging.info("Downloading %s to %s", remote.url, target)
        download(remote.url, partial)
        digest = _md5(partial)
        if digest != remote.md5:
            raise WeightsError(f"downloaded file has md5 {digest}, expected {remote.md5}")
        partial.replace(target)
    except (OSError, WeightsError) as e:  # urllib's URLError and socket timeouts are OSErrors.
        partial.unlink(missing_ok=True)
        raise WeightsError(
            f"{remote.name} is not in {cache_dir} and downloading it failed ({e}); download {remote.url} "
            f"(md5 {remote.md5}) on a machine with internet and place it at {target}"
        ) from e
    return target


def _md5(path: Path) -> str:
    """Hex md5 digest of a file, read in chunks."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()
