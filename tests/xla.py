"""XLA flags for the simulated CPU devices of the tests (plain Python: conftest runs it first)."""


def cpu_flags(devices: int, *, optimize: bool = False) -> str:
    """`devices` simulated CPU devices; LLVM at -O0 unless `optimize`.

    On a 2-core CPU, -O0 compiles the tests' tiny train steps in half the time (6.6 vs 13.1 s)
    and runs them as fast; a 300-step run of the demo model wants `optimize` (2.5x faster
    steps). Tests compare runs made under the same flags, or a run against a reference within a
    tolerance, so the level does not decide an outcome."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return flags if optimize else f"{flags} --xla_backend_optimization_level=0"
