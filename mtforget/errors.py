"""Errors that the command line turns into exit codes."""


class UsageError(Exception):
    """Bad usage, config or input. The CLI prints ``error: <message>`` and exits with 2.

    The message must name the key, file or line at fault.
    """


class TrialDiverged(RuntimeError):
    """Training produced a non-finite loss; the trial is recorded as failed."""


# How a trial's failure reason says that the config or input was at fault (exit code 2, and the
# trial is retried on the next run, once the user has fixed it).
USAGE_PREFIX = "bad configuration or input: "
