"""The XLA options vlx compiles its training and evaluation programs with, and the facts about
the host CPU they depend on.

`model.cpu_matmul` picks the library behind XLA:CPU's matmuls. jax 0.10's XLA runs each single
matmul as a YNNPACK fusion by default and the rest (a weight gradient's `x.T @ y` among them)
with Eigen. On this project's AMD EPYC (AVX2, 2 cores), a CLIP ViT-S/32 float32 training step
took 4-6% less time with every matmul in Eigen and YNNPACK kept for reductions, but CLIP
ViT-B/32's took 5% more: Eigen's GEMM falls behind YNNPACK's on wider layers (a 2,048-wide
output by 24-30%, `vlx bench matmul`). So `auto` picks Eigen on x86 CPUs whose widest vector
unit is AVX2 (the only kind measured) for models whose dense layers are at most
`EIGEN_MAX_WIDTH` wide, and keeps XLA's default everywhere else."""

from __future__ import annotations

import functools
import logging
import platform

log = logging.getLogger(__name__)

CPU_MATMULS = ("auto", "eigen", "default")

# XLA's LibraryFusionType list: the reductions stay in YNNPACK, single matmuls leave it.
_YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"
_EIGEN_MATMULS = {_YNN_FUSIONS: "LIBRARY_FUSION_TYPE_REDUCE"}
# The widest dense layer (output columns of a forward or input-gradient matmul) `auto` gives
# to Eigen: ViT-S's MLP. B-sized towers (2,048-3,072) ran faster in XLA's default.
EIGEN_MAX_WIDTH = 1536


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


def widest_matmul(model_cfg) -> int:
    """The widest output of the model's dense-layer matmuls, forward or input gradient: the
    fused q/k/v projection, the MLP, the projection to the shared embedding."""
    from vlx.models import variants

    widths = [model_cfg.embed_dim]
    for tower in ("image", "text"):
        size = variants.resolve(model_cfg[tower], where=f"model.{tower}")
        widths += [3 * size.width, size.mlp_dim]
    return max(widths)


def library(
    name: str, platform_name: str, widest: int, flags: frozenset[str] | None = None
) -> str | None:
    """The library XLA multiplies with on `platform_name` ('cpu', 'gpu', 'tpu') for
    `model.cpu_matmul=name` and a model whose widest dense layer is `widest`: `eigen`, `default`
    (XLA's own choice; also where this jaxlib lacks the option), or None off the CPU. `flags`:
    the host CPU's (read from /proc/cpuinfo when None)."""
    if platform_name != "cpu":
        return None
    if name == "auto":
        flags = cpu_info()[1] if flags is None else flags
        avx2 = vector_unit(flags) == "avx2"
        name = "eigen" if avx2 and widest <= EIGEN_MAX_WIDTH else "default"
    if name == "eigen" and all(_accepted(k, v) for k, v in _EIGEN_MATMULS.items()):
        return "eigen"
    return "default"


def options(library_name: str | None) -> dict[str, str]:
    """`compiler_options` for `jax.jit` that make XLA multiply with `library_name`, as
    `library` resolves it."""
    return dict(_EIGEN_MATMULS) if library_name == "eigen" else {}


def for_model(model_cfg, mesh) -> str | None:
    """`library` for `model_cfg` (a config's `model`) on the devices of `mesh`."""
    platform_name = mesh.devices.flat[0].platform
    return library(model_cfg.cpu_matmul, platform_name, widest_matmul(model_cfg))


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
