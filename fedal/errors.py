"""Exception types shared across layers. ``fedal.data`` raises ``ConfigError`` for run-config values
it can only check once it sees the data (a partition, a backbone for frozen features); defining it
here, below both, lets it do so without importing ``fedal.config``, and ``fedal.config`` re-exports
the same class, so ``except fedal.config.ConfigError`` still catches both."""


class ConfigError(ValueError):
    """A run-config value is invalid. The message names the key, the value and the valid values."""
