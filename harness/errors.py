"""Errors that reach the user as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix. The CLI prints it and exits with code 2."""


class RunFailed(Exception):
    """A single run cannot go on (e.g. the loss became NaN). The runner records it as failed and goes on."""


class BadOption(UserError):
    """Bad input on the command line itself (e.g. a task that needs --data-root without it): it stops everything
    before any run, where a task's bad data only fails that task's runs."""
