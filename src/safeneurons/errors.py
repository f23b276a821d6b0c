"""Exception tree. Every error a user can cause is a :class:`SafeneuronsError` subclass whose
message names the place (file, row, field, layer), what was found, what was expected and the fix.
The CLI prints these as one line and exits 2; any other exception as one line with exit 1 (``--debug``
shows its traceback)."""


class SafeneuronsError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(SafeneuronsError):
    """A configuration file, key or value is wrong."""


class DataError(SafeneuronsError):
    """A prompt or data file is missing, malformed or empty."""


class UnreadableFileError(DataError, ValueError):
    """A file exists but cannot be parsed (truncated JSON or safetensors, bytes that are not UTF-8); the message
    names it. Also a ValueError, so code that tolerated a bad file before keeps doing so."""


class ModelSpecError(SafeneuronsError):
    """A model spec names nothing that can be loaded."""


class ArchitectureError(SafeneuronsError):
    """The model class has no adapter, or a site cannot be resolved."""


class NeuronSetMismatchError(SafeneuronsError):
    """A neuron set does not fit the model it is used with."""


class NumericalError(SafeneuronsError):
    """Non-finite activations or statistics."""


class EmptySelectionError(SafeneuronsError):
    """An identification selected no neurons."""


class JudgeError(SafeneuronsError):
    """A judge is misconfigured or unavailable."""
