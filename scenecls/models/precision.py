"""The compute dtype: ``config.model.dtype`` ("auto", "float32" or "bfloat16") resolved in one place.

bfloat16 is the dtype of the convolutions' and matmuls' inputs and of the activations between them. What
must stay accurate stays float32 whatever it is: the parameters (and so Adam's updates), BatchNorm
statistics and their running averages (flax reduces in float32), the head's pooling and its logits layer
(``heads._pool_and_classify``), softmax and the loss (``train.step.weighted_cross_entropy``).

"auto" is bfloat16 on a GPU or TPU, where it roughly doubles matrix throughput and halves activation
memory. On a CPU it is float32 unless the CPU has native bfloat16 (AVX512-BF16 or AMX) *and*
``experiments/xla_options.py`` measured bfloat16 faster there (``BF16_PAYS_ON_NATIVE_CPU``).
"""

from collections.abc import Iterable

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPES = ("auto", *COMPUTE_DTYPES)  # the choices of config.model.dtype
ACCELERATORS = ("gpu", "tpu")  # jax.default_backend() names where "auto" means bfloat16
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 instructions
# Measured with experiments/xla_options.py on an Intel Xeon with AVX512-BF16 and AMX (Sapphire Rapids
# class; docs/benchmarks.md, "bfloat16 against float32 on a CPU"): XLA:CPU's bfloat16 was slower than
# float32 on both train steps in both rounds (0.68-0.82x) and no steadily faster on the forward pass, so
# "auto" keeps float32 on every CPU.
BF16_PAYS_ON_NATIVE_CPU = False


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of ``path``); empty where it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(
    name: str,
    platform: str | None = None,
    flags: Iterable[str] | None = None,
    bf16_pays_on_cpu: bool = BF16_PAYS_ON_NATIVE_CPU,
) -> str:
    """The concrete compute dtype ("float32" or "bfloat16") of ``config.model.dtype=name``.

    ``platform`` defaults to JAX's default backend and ``flags`` to this machine's CPU flags (read only
    when they decide).
    """
    if name not in DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; expected one of {list(DTYPES)}")
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    if platform in ACCELERATORS:
        return "bfloat16"
    if platform == "cpu" and bf16_pays_on_cpu:
        native = set(cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS)
        return "bfloat16" if native else "float32"
    return "float32"


def compute_dtype(name: str) -> jnp.dtype:
    """The jnp dtype of ``config.model.dtype=name`` on this machine (see ``resolve_dtype``)."""
    return COMPUTE_DTYPES[resolve_dtype(name)]
