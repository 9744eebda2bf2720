import math
import re

import pytest

from tests.helpers import compiled_step, tiny_config
from vlx import parallel


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 4, 1)])
def test_each_device_looks_up_only_its_own_rows_of_the_batch(shape):
    """The token-embedding lookup in the compiled, partitioned train step gathers this
    device's batch rows only. Left to sharding propagation on meshes with both `data` and
    `fsdp` (or `tensor`) axes, XLA looked up all rows of the global batch on every device."""
    mesh_cfg = dict(zip(parallel.AXES, shape, strict=True))
    cfg = tiny_config(mesh=mesh_cfg)
    _, compiled = compiled_step(cfg, parallel.make_mesh(cfg.mesh))
    lookups = [
        line
        for line in compiled.as_text().splitlines()
        if re.search(r"= f32\[[0-9,]+\]\S* gather\(", line) and "_take" in line
    ]
    assert lookups, "no token-embedding lookup found in the step"
    tokens = cfg.batch_size // (mesh_cfg["data"] * mesh_cfg["fsdp"]) * cfg.model.text.context_length
    for line in lookups:
        (shape,) = re.search(r"= f32\[([0-9,]+)\]", line).groups()
        *looked_up, width = map(int, shape.split(","))
        assert (math.prod(looked_up), width) == (tokens, cfg.model.text.width), line
