"""Errors that the command line turns into exit codes."""


class UsageError(Exception):
    """Bad usage, config or input. The CLI prints ``error: <message>`` and exits with 2.

    The message must name the key, file or line at fault.
    """


class TrialDiverged(RuntimeError):
    """Training produced a non-finite loss; the trial is recorded as failed."""
