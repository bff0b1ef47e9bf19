"""The error types a user sees as one line; every module may import them (this module imports nothing)."""


class ConfigError(ValueError):
    """Bad user input; the message is one line that names the flag or file and what is allowed."""


class WriteError(Exception):
    """A file could not be written (a full disk, no permission, a read-only folder): one line naming the file and the
    error; the files written before it are intact, and rerunning the same command resumes."""


class Interrupted(KeyboardInterrupt):
    """A study stopped by SIGINT or SIGTERM at a chunk boundary (`decay.interrupts`): its finished rows and
    checkpoints are on disk; the message is one line saying where it stopped."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal stopped: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0])
