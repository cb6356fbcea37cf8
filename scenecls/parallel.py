"""Data parallelism with JAX's SPMD runtime: one device mesh, batches sharded, parameters replicated.

The same code runs on 1 CPU device, N GPUs or several hosts: ``jax.jit`` follows the shardings of its
inputs, so a step written for one device computes the global batch's result on many (gradients and
BatchNorm statistics are reduced across devices by XLA). Each process feeds its own slice of every global
batch; ``gather`` brings results back to numpy on every process.
"""

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
T = TypeVar("T")


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins this process to a multi-process JAX run (call before anything touches a device).

    With no explicit values, ``jax.distributed`` detects the cluster (SLURM, GKE/TPU, Open MPI) from the
    environment. CPU devices use gloo collectives, so a run across CPU processes works too.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "Process %d of %d: %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh along the batch (``"data"``) axis over ``devices``: default every device of every process.

    ``jax.local_devices()`` gives a process-local mesh, for work a process does on its own (its images).
    """
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def is_primary() -> bool:
    """True on the process that writes files (plots, JSON, reports): process 0."""
    return jax.process_index() == 0


def check_divisible(batch_size: int, field: str, parts: int, what: str = "devices") -> None:
    """Raises ValueError unless the global ``batch_size`` (config ``field``) splits evenly into ``parts``
    (the mesh's devices, or the processes feeding it)."""
    if batch_size % parts:
        raise ValueError(
            f"config.{field}={batch_size} is not divisible by the {parts} {what}; "
            f"set --config.{field} to a multiple of {parts}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Rows split across devices along the batch axis."""
    return NamedSharding(mesh, P(AXIS))


def replicate(mesh: Mesh, tree: T) -> T:
    """A pytree of host values (identical on every process) as arrays replicated on every device."""
    sharding = replicated(mesh)

    def put(leaf: Any) -> jax.Array:
        value = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(put, tree)


def with_sharding(tree: T, sharding: NamedSharding) -> T:
    """Abstract arrays (e.g. from ``jax.eval_shape``) placed on ``sharding``: a checkpoint restore target."""
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree
    )


def shard_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's numpy batch as its rows of global arrays, split along the batch axis.

    Every process passes its own, equally sized slice; the global batch is their concatenation.
    """
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def local_rows(array: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded array that this process fed in (``shard_batch``'s inverse)."""
    shards = {shard.index[0].start or 0: shard for shard in array.addressable_shards}
    return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


def gather_interleaved(local: np.ndarray) -> np.ndarray:
    """Concatenates equally long per-process arrays so row ``j`` of process ``p`` lands at ``j * P + p``.

    This undoes ``tf.data``'s ``shard(P, p)`` (process ``p`` reads examples p, p + P, ...): the result
    is in the data's own order whatever the process count.
    """
    if jax.process_count() == 1:
        return local
    stacked = np.asarray(multihost_utils.process_allgather(local, tiled=False))  # (P, n, ...)
    return np.swapaxes(stacked, 0, 1).reshape(-1, *local.shape[1:])


def gather_strings(local: list[str]) -> list[str]:
    """``gather_interleaved`` for equally long lists of str (fixed-width UTF-8 bytes through the runtime)."""
    if jax.process_count() == 1:
        return list(local)
    encoded = [s.encode() for s in local]
    width = int(np.max(multihost_utils.process_allgather(np.array([max(map(len, encoded), default=0)]))))
    codes = np.zeros((len(encoded), max(width, 1)), np.uint8)
    for row, data in zip(codes, encoded, strict=True):
        row[: len(data)] = np.frombuffer(data, np.uint8)
    return [bytes(row).rstrip(b"\0").decode() for row in gather_interleaved(codes)]


def gather_json(local: list[Any], total: int) -> list[Any]:
    """The JSON-able items of every process in data order, process p having items p, p + P, ... of ``total``.

    Processes hold ``ceil(total / P)`` or one fewer items; the result has ``total`` items, on every process.
    """
    per_process = -(-total // jax.process_count())
    texts = [json.dumps(item) for item in local] + ["null"] * (per_process - len(local))
    return [json.loads(text) for text in gather_strings(texts)[:total]]


def primary_first(fn: Callable[[], T]) -> T:
    """Runs ``fn`` on process 0, then (after a barrier) on the others: e.g. build files, then read them."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_primary() else None
    multihost_utils.sync_global_devices(f"primary_first:{getattr(fn, '__name__', 'fn')}")
    return result if is_primary() else fn()


def barrier(name: str) -> None:
    """Waits until every process reaches ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
