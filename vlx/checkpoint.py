"""Orbax checkpoints in `WORKDIR/checkpoints/<step>/`: train state, data position, config.

- `state`: model and optimizer arrays as NNX pure dicts; restored directly into the shardings of
  whatever mesh the run uses now (a checkpoint from 8 devices restores onto 4, fsdp onto data);
  where the encoders' layers are stored the other way (`model.scan`), read sharded as stored
  and converted on the devices.
- `data`: the Grain iterator state right after the step's batch, and the data counters, so the
  resumed run reads exactly the batches the uninterrupted run would have read.
- `config`: the config that wrote it; a model that does not match is refused by name.

Saves are asynchronous: the step loop waits only for the device-to-host copy. Orbax writes each
checkpoint under a temporary name and renames it when complete, so a process killed mid-save
leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vlx.errors import CheckpointError
from vlx.export import params

log = logging.getLogger(__name__)

# Orbax's replica-parallel saving splits each replicated array into one slice per replica, so that
# every host writes a share. Each distinct slice is an XLA program compiled on first use: for the
# demo's 141 small arrays on 8 CPU devices, 160 programs and 11 s at the first save, to spread a
# few kilobytes. Only slices at least this large are worth it.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20


def _type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
    """Orbax's standard handlers, with replica-parallel saving kept to large arrays."""
    standard = (int, float, bytes, np.number, np.ndarray, str, type(ocp.PLACEHOLDER))
    return ocp.type_handlers.create_type_handler_registry(
        *[(t, ocp.type_handlers.get_type_handler(t)) for t in standard],
        (
            jax.Array,
            ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES
            ),
        ),
    )


def _pure(arrays: dict) -> dict:
    return {name: nnx.to_pure_dict(state) for name, state in arrays.items()}


def _abstract(arrays: dict) -> dict:
    """ShapeDtypeStructs carrying each leaf's target sharding."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _pure(arrays)
    )


class Checkpointer:
    def __init__(self, directory: str | Path, ckpt_cfg=None, *, read_only: bool = False):
        directory = Path(directory).absolute()
        if not read_only:
            directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ckpt_cfg.keep if ckpt_cfg else None,
            keep_period=(ckpt_cfg.keep_every or None) if ckpt_cfg else None,
            enable_async_checkpointing=bool(ckpt_cfg.async_save) if ckpt_cfg else False,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = directory
        handlers = {
            "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers()),
            "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, arrays: dict, data: dict, cfg) -> float:
        """Starts saving `step`; returns the seconds the caller was blocked."""
        t0 = time.perf_counter()
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_pure(arrays)),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(cfg.to_dict()),
            ),
            force=True,
        )
        return time.perf_counter() - t0

    def saved_config(self, step: int) -> ml_collections.ConfigDict:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return ml_collections.ConfigDict(restored["config"])

    def restore(self, step: int, arrays: dict, *, only: tuple[str, ...] | None = None):
        """Restores `step` into the shapes and shardings of `arrays` (real or abstract).

        Returns (arrays, data state). `only=('model',)` restores the model and keeps the rest of
        `arrays` as given (fine-tuning starts). Arrays are read straight into their shardings,
        each process only its shards. A checkpoint whose encoders store their layers the other
        way (stacked by `model.scan`, or one array per layer) is read so too, sharded as stored,
        and converted on the devices (`params.relayout`), one part (model, optimizer) at a time,
        each part's read arrays released once converted.
        """
        names = tuple(n for n in arrays if only is None or n in only)
        metadata = self.manager.item_metadata(step)["state"]
        where = self.directory / str(step)
        same_layout = check_shapes(metadata, {n: arrays[n] for n in names}, where)
        if same_layout:
            target = _abstract({n: arrays[n] for n in names})
        else:
            log.info("%s stores its layers the other way (model.scan); converting them", where)
            target = {n: params.sharded_like(metadata[n], arrays[n]) for n in names}
        restored = self._read(step, target, partial=only is not None, data=only is None)
        out = dict(arrays)
        for name in names:
            pure = restored["state"].pop(name)
            if same_layout:
                out[name] = jax.tree.map(lambda x: x, arrays[name])
                nnx.replace_by_pure_dict(out[name], pure)
            else:
                out[name] = params.relayout(arrays[name], pure)
        return out, (restored["data"] if not only else None)

    def _read(self, step: int, target: dict, *, partial: bool, data: bool) -> dict:
        """Reads the arrays of `target` (abstract, with shardings) of `step`, each process only
        its own shards; `partial`: `target` holds only part of the saved state; `data`: the
        data state too."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        items = {
            "state": ocp.args.PyTreeRestore(
                target, restore_args=restore_args, partial_restore=partial
            )
        }
        if data:
            items["data"] = ocp.args.JsonRestore()
        return self.manager.restore(step, args=ocp.args.Composite(**items))

    def load_arrays(self, step: int, only: tuple[str, ...] | None = None) -> dict:
        """The saved state of `step` (or its parts `only`) as nested dicts of numpy arrays (no
        model, no devices)."""
        metadata = self.manager.item_metadata(step)["state"]
        target, as_numpy = _as_numpy({n: metadata[n] for n in only or metadata})
        state = ocp.args.PyTreeRestore(
            target, restore_args=as_numpy, partial_restore=only is not None
        )
        return self.manager.restore(step, args=ocp.args.Composite(state=state))["state"]

    def load_towers(self, step: int, towers: tuple[str, ...], model: nnx.State) -> nnx.State:
        """`model` with the weights of `towers` (`image`, `text`) taken from the model saved at
        `step`, in either layer layout (`model.scan`), each placed like the array it
        replaces; the rest of the checkpoint is not read."""
        metadata = self.manager.item_metadata(step)["state"]["model"]
        check_shapes(metadata, {t: model[t] for t in towers}, self.directory / str(step))
        target = {"model": params.sharded_like({t: metadata[t] for t in towers}, model)}
        restored = self._read(step, target, partial=True, data=False)
        return params.relayout(model, restored["state"]["model"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_shapes(metadata, arrays: dict, where) -> bool:
    """Raises CheckpointError listing every array of `arrays` whose shape per layer differs
    from the checkpoint's (or is missing there). Returns whether the checkpoint also stores the
    layers the same way (stacked, or one array per layer)."""
    target = _pure(arrays)
    saved = {name: metadata[name] for name in target if name in metadata}
    want, have = params.shapes(target), params.shapes(saved)
    problems = [
        f"{k}: checkpoint {have.get(k, 'missing')} vs model {v}"
        for k, v in want.items()
        if have.get(k) != v
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (
            f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        )
        raise CheckpointError(
            f"checkpoint {where} does not match the model and optimizer of this run "
            f"({len(problems)} arrays): {shown}"
        )
    stored = {k: tuple(getattr(x, "shape", ())) for k, x in params.leaves(saved).items()}
    return all(stored.get(k) == tuple(x.shape) for k, x in params.leaves(target).items())


def _as_numpy(metadata) -> tuple[dict, dict]:
    """(target, restore args) that read the arrays of `metadata` as numpy arrays."""
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(metadata))
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    return target, args


# Model settings that change how the model runs, not its parameters: a run may resume with
# other values (more remat after running out of memory, XLA attention and unrolled layers on a
# GPU; `restore` converts between stacked and per-layer arrays).
RUNTIME_MODEL_KEYS = frozenset(
    {
        "model.dtype",
        "model.remat",
        "model.attention",
        "model.cpu_matmul",
        "model.scan",
        "model.image.patch_dropout",
    }
)


def model_config_differences(saved, current) -> list[str]:
    """'model.x: checkpoint A vs config B' for every setting of the saved arrays that differs:
    the model's, except `RUNTIME_MODEL_KEYS`, and `optim.freeze` (which parameters have
    optimizer state)."""

    def flat(node, prefix="model"):
        out = {}
        for key, value in dict(node).items():
            if isinstance(value, dict | ml_collections.ConfigDict):
                out.update(flat(value, f"{prefix}.{key}"))
            else:
                out[f"{prefix}.{key}"] = value
        return out

    def settings(cfg) -> dict:
        return {**flat(cfg.model.to_dict()), "optim.freeze": cfg.optim.get("freeze", "")}

    a, b = settings(saved), settings(current)
    return [
        f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in RUNTIME_MODEL_KEYS and _norm(a.get(k)) != _norm(b.get(k))
    ]


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def find(path: str | Path) -> tuple[Checkpointer, int]:
    """A workdir, its `checkpoints/` directory, or one step's directory -> (manager, step)."""
    path = Path(path)
    candidates = [(path / "checkpoints", None), (path, None), (path.parent, path.name)]
    for directory, step in candidates:
        if directory.is_dir():
            mngr = Checkpointer(directory, read_only=True)
            chosen = int(step) if step and step.isdigit() else mngr.latest_step()
            if chosen is not None and chosen in mngr.manager.all_steps():
                return mngr, chosen
    raise CheckpointError(f"no complete checkpoint found at {path}")
