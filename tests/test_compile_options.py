import re

import jax
import numpy as np
import pytest

from tests.helpers import compiled_step, tiny_config
from tests.test_train import demo_batch, params_of
from vlx import compile_options, config, parallel, train
from vlx.data import tokenizer as tokenizer_lib
from vlx.evals.common import EvalContext

AVX2 = frozenset({"sse2", "avx", "fma", "avx2"})


def test_auto_picks_eigen_on_avx2_for_layers_up_to_vit_s_width():
    library = compile_options.library
    s_wide, b_wide = 1536, 2048
    assert library("auto", "cpu", s_wide, AVX2) == "eigen"
    assert library("auto", "cpu", b_wide, AVX2) == "default"
    assert library("auto", "cpu", s_wide, AVX2 | {"avx512f"}) == "default"
    assert library("auto", "cpu", s_wide, frozenset({"fp", "asimd"})) == "default"  # arm64
    assert library("auto", "cpu", s_wide, frozenset()) == "default"  # no cpuinfo
    assert library("default", "cpu", s_wide, AVX2) == "default"
    assert library("eigen", "cpu", b_wide, frozenset()) == "eigen"
    assert library("eigen", "gpu", s_wide, AVX2) is None
    assert library("auto", "tpu", s_wide, AVX2) is None


@pytest.mark.parametrize(
    ("recipe", "widest"),
    [
        ("configs/clip_vit_s32.py", 1536),
        ("configs/clip_vit_b32.py", 3072),
        ("configs/demo.py", 384),
    ],
)
def test_widest_matmul_is_the_widest_mlp_or_fused_projection(recipe, widest):
    model = config.load(recipe).model
    assert compile_options.widest_matmul(model) == widest
    model.text.mlp_dim = 4096
    assert compile_options.widest_matmul(model) == 4096


def test_options_are_xlas_only_where_it_knows_them():
    assert compile_options.options(None) == {}
    assert compile_options.options("default") == {}
    assert compile_options.options("eigen") == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"
    }
    # An option this jaxlib does not have is left out rather than failing every compile.
    assert not compile_options._accepted("xla_cpu_no_such_option", "1")


def _ynn_dots(hlo: str) -> int:
    """YNNPACK fusions whose fused computation holds a dot."""
    computations = dict(re.findall(r"\n(%\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
    called = re.findall(r"calls=(%[\w.\-]+), [^\n]*__ynn_fusion", hlo)
    return sum(" dot(" in computations[c] for c in called)


def _step(cpu_matmul: str, mesh):
    # lr 1e-3, as in test_train: Adam turns the float noise of the attention key bias's zero
    # gradient into updates of lr * noise / eps.
    cfg = tiny_config(model=dict(cpu_matmul=cpu_matmul), optim=dict(lr=1e-3))
    return cfg, *compiled_step(cfg, mesh)


def test_eigen_moves_every_train_step_matmul_out_of_ynnpack_with_the_same_update():
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    results = {}
    for library in ("default", "eigen"):
        cfg, state, step = _step(library, mesh)
        hlo = step.as_text()
        results[library] = (_ynn_dots(hlo), hlo.count(" dot("))
        arrays, metrics = step(state.arrays, parallel.global_batch(demo_batch(cfg, 16), mesh))
        results[library] += (float(metrics["loss"]), params_of(arrays))
    (ynn, dots, loss, params), (ynn_e, dots_e, loss_e, params_e) = results.values()
    assert ynn > 0 and dots > 0  # XLA's default: YNNPACK runs the single matmuls
    assert ynn_e == 0 and dots_e >= dots  # every matmul left for Eigen
    assert loss_e == pytest.approx(loss, rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_e, params)


@pytest.mark.parametrize("library", ["default", "eigen"])
def test_evaluation_towers_compile_with_the_configured_library(library):
    cfg = tiny_config(model=dict(cpu_matmul=library))
    mesh = parallel.make_mesh(cfg.mesh)
    tok = tokenizer_lib.load(cfg.data.tokenizer, cfg.model.text.context_length)
    state = train.create_state(cfg, mesh, eos_id=tok.eos_id, tx=None)
    model = state.arrays["model"]
    context = EvalContext(cfg, mesh, state.graphdefs["model"], model, state.shardings["model"], tok)
    images = np.zeros((8, 16, 16, 3), np.uint8)
    tokens = np.zeros((8, cfg.model.text.context_length), np.int32)
    for tower, batch in ((context._images, images), (context._texts, tokens)):
        hlo = tower.lower(model, batch).compile().as_text()
        assert (_ynn_dots(hlo) > 0) == (library == "default")
