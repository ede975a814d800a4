"""ingot's exceptions. Each message names the field or cause, the limit, and the fix."""


class IngotError(Exception):
    """Base of every error ingot raises on purpose."""


class ConfigError(IngotError, ValueError):
    """A configuration value is out of range or inconsistent."""


class CheckpointError(IngotError):
    """A checkpoint is missing, corrupt, or of an architecture ingot does not support."""


class EngineError(IngotError):
    """An engine directory is incomplete, of another format version, or built for another device."""


class RequestError(IngotError, ValueError):
    """A request does not fit the engine's limits or has invalid parameters."""
