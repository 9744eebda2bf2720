"""Every test runs on a real 8-device CPU mesh: the flag must be set before JAX is imported."""

import atexit
import os
import shutil
import tempfile

from tests.xla import cpu_flags

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {cpu_flags(8)}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# JAX's persistent compilation cache, one per pytest process and inherited by the `vlx`
# processes its tests start: most tests compile the same tiny train steps, and every
# `train.train` or CLI run builds a new jit that would otherwise compile again. One per pytest
# process (each xdist worker makes its own, even if it inherited one) because JAX writes entries
# in place, unlocked.
if os.environ.get("VLX_TESTS_CACHE_PID") != str(os.getpid()):
    _cache = tempfile.mkdtemp(prefix="vlx-tests-jax-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, VLX_TESTS_CACHE_PID=str(os.getpid()))
    # Also the sub-second programs (initialisers, evaluators), which JAX leaves out by default.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
