"""One exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class JojoInputError(ValueError):
    """Input the run cannot use. The message names the problem and the fix."""


class TrackingError(RuntimeError):
    """Training finished and the outputs are written, but logging them to MLflow failed (retryable)."""


class TrainingDiverged(JojoInputError):
    """The loss became NaN/Inf: these settings cannot train (the fix is in the message, usually a lower --lr).

    A JojoInputError, so the CLI prints one line and exits 2: rerunning the same settings cannot succeed, and the
    run records the divergence so that a relaunch of them stops at once instead of training into it again.
    """
