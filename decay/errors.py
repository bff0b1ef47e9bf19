"""The one error type of bad user input; every module may import it (it imports nothing)."""


class ConfigError(ValueError):
    """Bad user input; the message is one line that names the flag or file and what is allowed."""
