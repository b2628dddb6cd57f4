"""Errors that reach the user as one clear line instead of a traceback."""


def one_line(exc: BaseException) -> str:
    """``Type: text`` on one line, however many lines the text has."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class UserError(Exception):
    """Bad input: the message names the problem and the fix. The CLI prints it and exits with code 2."""


class RunFailed(Exception):
    """A single run cannot go on. The runner records it as failed, with ``failure`` (its kind, a column of the
    row: see :data:`harness.store.FAILURES`) and the message as its reason, and goes on."""

    failure = "error"


class BadData(RunFailed, UserError):
    """A task's data cannot be read (a corrupt image found while decoding, a cache that cannot be written): the
    run fails as ``data``, which a plain rerun retries once the data is mended, as a check before the run would."""

    failure = "data"


class NonFiniteLoss(RunFailed):
    """The training loss became NaN or infinite."""

    failure = "nan"


class RunTimeout(RunFailed):
    """The run took longer than its ``--timeout``."""

    failure = "timeout"


class BadOption(UserError):
    """Bad input on the command line itself (e.g. a task that needs --data-root without it): it stops everything
    before any run, where a task's bad data only fails that task's runs."""
