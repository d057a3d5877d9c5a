"""Errors, atomic files and checkpoints shared by every entry script."""


class UserError(Exception):
    """Bad input from the user.

    The message is one line that names the problem and what to do. Entry
    scripts print it and exit with status 2.
    """
