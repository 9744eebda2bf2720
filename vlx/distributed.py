"""Multi-process runs through `jax.distributed`: TPU pods, SLURM, or explicit coordinates.

`initialize()` starts JAX's multi-process runtime when the environment asks for it and does
nothing for a single process:
- explicit: `--coordinator HOST:PORT --num_processes N --process_id I`, or the environment
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
- a SLURM job with more than one task, or a multi-host TPU slice: JAX detects the coordinates.
On CPU the processes exchange data with gloo collectives.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

from vlx.errors import VlxError


class DistributedError(VlxError, RuntimeError):
    """The multi-process runtime could not start."""


@dataclasses.dataclass(frozen=True)
class Coordinates:
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300


def from_env(args: Coordinates) -> Coordinates:
    """Explicit arguments, else the JAX_* environment variables."""
    env = os.environ
    return dataclasses.replace(
        args,
        coordinator=args.coordinator or env.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=args.num_processes
        if args.num_processes is not None
        else _int(env.get("JAX_NUM_PROCESSES")),
        process_id=args.process_id
        if args.process_id is not None
        else _int(env.get("JAX_PROCESS_ID")),
    )


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def detected_cluster() -> str | None:
    """'slurm' or 'tpu' when the environment is a multi-process job JAX can read, else None."""
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def initialize(args: Coordinates) -> str:
    """Starts jax.distributed if asked to; returns how ('single', 'explicit', 'slurm', 'tpu')."""
    import jax

    coords = from_env(args)
    explicit = [coords.coordinator, coords.num_processes, coords.process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise DistributedError(
                "--coordinator, --num_processes and --process_id go together (or "
                "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
            )
        if not 0 <= coords.process_id < coords.num_processes:
            raise DistributedError(
                f"--process_id {coords.process_id} is not in [0, {coords.num_processes})"
            )
        if coords.process_id != 0:
            _wait_for(coords.coordinator, coords.timeout_s)
        kind = "explicit"
        kwargs = dict(
            coordinator_address=coords.coordinator,
            num_processes=coords.num_processes,
            process_id=coords.process_id,
        )
    else:
        kind, kwargs = detected_cluster(), {}
        if kind is None:
            return "single"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(initialization_timeout=coords.timeout_s, **kwargs)
    except Exception as e:  # the runtime raises plain RuntimeErrors/XlaRuntimeErrors
        where = coords.coordinator or f"the {kind} coordinator"
        raise DistributedError(
            f"could not join the multi-process run at {where} within {coords.timeout_s}s "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); check that process 0 is "
            "running and the address and port are reachable"
        ) from None
    return kind


def _wait_for(address: str, timeout_s: int) -> None:
    """Waits until process 0's coordinator accepts connections. JAX's own client aborts the
    process when it cannot register, so an unreachable address is caught here first."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator {address!r} must look like HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"could not join the multi-process run at {address} within {timeout_s}s "
                    f"({e.strerror or e}); check that process 0 is running and the address and "
                    "port are reachable from this host"
                ) from None
            time.sleep(0.5)
