"""The run's exceptions. Bad input (JojoInputError) is printed by the CLI as one line, exit code 2."""


class JojoInputError(ValueError):
    """Input the run cannot use. The message names the problem and the fix."""


class TrackingError(RuntimeError):
    """Training finished and the outputs are written, but logging them to MLflow failed (retryable)."""


class TrainingDiverged(JojoInputError):
    """The loss became NaN/Inf: these settings cannot train (the fix is in the message, usually a lower --lr).

    A JojoInputError, so the CLI prints one line and exits 2: rerunning the same settings cannot succeed, and the
    run records the divergence so that a relaunch of them stops at once instead of training into it again.
    """


class TrainingFailed(RuntimeError):
    """Ray Train gave up on the run (a worker failed more than --max-failures times, or its controller failed);
    Ray's error is the cause. The checkpoints stay: the same command resumes from the last one."""
