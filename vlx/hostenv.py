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
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

TUNABLES = "glibc.malloc.hugetlb=1"


def reexec_environment(environ: Mapping[str, str], platform: str = sys.platform) -> dict | None:
    """The environment to re-execute `vlx` with, or None to run as is: not Linux, or the user
    has set GLIBC_TUNABLES (theirs is kept; it also marks an already re-executed process)."""
    if not platform.startswith("linux") or "GLIBC_TUNABLES" in environ:
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES}
