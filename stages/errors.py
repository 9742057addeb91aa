"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class MgpoError(Exception):
    """A problem with the user's input (file, row, option) rather than a bug in mgpo."""
