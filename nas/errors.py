"""The error types a user meets: bad input, and a run whose numbers stopped being finite."""


class ConfigError(ValueError):
    """Raised for bad user input (config values, paths, data files) before or during a run."""


class NonFiniteError(FloatingPointError):
    """A loss, a gradient, the DAM, a dev output or a dev metric became NaN or ±inf; the message names the quantity,
    the stage and the step.
    The run stops: nothing is ranked, trained further or evaluated from it, and no ``metrics.json`` is written."""
