"""Process settings that must be in place before the interpreter starts.

XLA allocates a step's temporary buffers afresh on every execution. glibc serves blocks that
large with freshly mapped 4 KiB pages, so every step page-faults its whole working set: about
1.2M faults and 15% of the time of a CPU ViT-S/32 training step on this project's machine.
glibc's `glibc.malloc.hugetlb=1` tunable (glibc 2.35+) backs those blocks with transparent huge
pages wherever THP is in its `madvise` mode (the default of Debian and Ubuntu), which removed 95%
of the faults and 14% of the step time. The block is still mapped and zeroed anew every step
(about 5% of the step's cycles); the README's Performance section says why vlx stops here.
Tunables are read when a process starts, so the `vlx` command re-executes itself once with the
tunable set.

JAX reads its persistent compilation cache's directory when it is imported, and transformers
decides at import whether to print its advisories, so `vlx` sets both before either is imported
(`import_environment`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLES = "glibc.malloc.hugetlb=1"


def reexec_environment(environ: Mapping[str, str], platform: str = sys.platform) -> dict | None:
    """The environment to re-execute `vlx` with, or None to run as is: not Linux, or the user
    has set GLIBC_TUNABLES (theirs is kept; it also marks an already re-executed process)."""
    if not platform.startswith("linux") or "GLIBC_TUNABLES" in environ:
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES}


def import_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Variables to add to `environ` before JAX and transformers are imported, each only where
    the user has not set it:

    - JAX_COMPILATION_CACHE_DIR: `$XDG_CACHE_HOME/vlx/jax` (default `~/.cache/vlx/jax`; an
      empty value of the user's turns the cache off). JAX then keeps compiled programs across
      runs: a resumed run, a second `vlx eval` or `vlx bench` of the same config skips XLA's
      compile (the demo's train step: 10.2 s to 3.6 s; what is left is tracing, which no cache
      covers).
    - TRANSFORMERS_NO_ADVISORY_WARNINGS=1: vlx uses transformers for its tokenizers, which need
      no PyTorch, yet on the plain install (no `torch` extra) every command began with
      transformers' advice that "PyTorch was not found. Models won't be available"."""
    out = {}
    if "JAX_COMPILATION_CACHE_DIR" not in environ:
        base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        out["JAX_COMPILATION_CACHE_DIR"] = os.path.join(base, "vlx", "jax")
    if "TRANSFORMERS_NO_ADVISORY_WARNINGS" not in environ:
        out["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    return out
