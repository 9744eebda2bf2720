"""The XLA options vlx compiles its training and evaluation programs with, and the facts about
the host CPU they depend on.

`model.cpu_matmul` picks the library behind XLA:CPU's matmuls. jax 0.10's XLA runs each single
matmul as a YNNPACK fusion by default and the rest (a weight gradient's `x.T @ y` among them)
with Eigen. On this project's AMD EPYC (AVX2, 2 cores) Eigen multiplies the forward forms of a
ViT-S block 2-16% faster (`vlx bench matmul`: 16% for 384x384, 2-3% for the MLP's), and a CLIP
ViT-S/32 float32 training step took 3-5% less time with every matmul in Eigen and YNNPACK kept
for reductions. `auto` does that on x86 CPUs whose widest vector unit is AVX2, the only kind
measured; elsewhere it keeps XLA's default."""

from __future__ import annotations

import functools
import logging
import platform

log = logging.getLogger(__name__)

CPU_MATMULS = ("auto", "eigen", "default")

# XLA's LibraryFusionType list: the reductions stay in YNNPACK, single matmuls leave it.
_YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"
_EIGEN_MATMULS = {_YNN_FUSIONS: "LIBRARY_FUSION_TYPE_REDUCE"}


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the host CPU; the flags are empty where Linux's cpuinfo
    is not there to read."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return model, flags


def vector_unit(flags: frozenset[str]) -> str | None:
    """The widest x86 vector unit among `flags`: avx512f, avx2, avx, or None."""
    return next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)


def cpu_matmul(name: str, flags: frozenset[str] | None = None) -> str:
    """`model.cpu_matmul` resolved on this host: `auto` is `eigen` where AVX2 is the widest
    vector unit, else `default`."""
    if name != "auto":
        return name
    flags = cpu_info()[1] if flags is None else flags
    return "eigen" if vector_unit(flags) == "avx2" else "default"


def options(name: str, platform_name: str) -> dict[str, str]:
    """`compiler_options` for `jax.jit` of a program run on `platform_name` ('cpu', 'gpu',
    'tpu'). Empty off the CPU, for `default`, and where this jaxlib lacks the option."""
    if platform_name != "cpu" or cpu_matmul(name) == "default":
        return {}
    return {k: v for k, v in _EIGEN_MATMULS.items() if _accepted(k, v)}


def library(name: str, platform_name: str) -> str | None:
    """The library that `options` has XLA multiply with on `platform_name`: `eigen`,
    `default` (XLA's own choice), or None off the CPU."""
    if platform_name != "cpu":
        return None
    return "eigen" if options(name, platform_name) else "default"


def for_mesh(name: str, mesh) -> dict[str, str]:
    """`options` for the devices of `mesh`."""
    return options(name, mesh.devices.flat[0].platform)


@functools.cache
def _accepted(option: str, value: str) -> bool:
    """Whether this jaxlib's compiler takes `option=value` (XLA renames experimental options)."""
    import jax

    try:
        fn = jax.jit(lambda x: x + 1, compiler_options={option: value})
        fn.lower(jax.ShapeDtypeStruct((), "float32")).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises its own runtime error type
        log.debug("XLA option %s not accepted (%s); keeping XLA's matmuls", option, e)
        return False
    return True
