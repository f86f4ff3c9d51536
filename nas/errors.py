"""The one error type for bad input: its message names the problem and the fix."""


class ConfigError(ValueError):
    """Raised for bad user input (config values, paths, data files) before or during a run."""
