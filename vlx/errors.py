"""Errors vlx raises for input a user can fix; the CLI prints their message on one line."""


class VlxError(Exception):
    """Base class: the message names the file or key at fault and the fix."""


class ConfigError(VlxError, ValueError):
    """A config file, key or value is wrong."""


class MeshError(VlxError, ValueError):
    """The mesh or the batch does not fit the devices."""


class DataError(VlxError, ValueError):
    """A dataset is missing, not a vlx dataset, or has too many bad examples."""


class CheckpointError(VlxError, ValueError):
    """A checkpoint is missing, or was written for a different model."""


class TrainingError(VlxError, RuntimeError):
    """Training cannot go on (for example, the loss is no longer finite)."""


class ExportError(VlxError, ValueError):
    """A model that a PyTorch format cannot represent, or a checkpoint that cannot be read."""
