"""One exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class JojoInputError(ValueError):
    """Input the run cannot use. The message names the problem and the fix."""


class TrackingError(RuntimeError):
    """Training finished and the outputs are written, but logging them to MLflow failed (retryable)."""
