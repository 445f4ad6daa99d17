"""Errors a user can fix, which ``run.py`` reports in one line; a module importing nothing, so that every
layer can raise them."""


class UserError(Exception):
    """Something the user can fix; the message names the key or path, the bad value and what is valid."""
