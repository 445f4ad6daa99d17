"""Errors a user can fix: a wrong value, a missing path. ``run.py`` reports them in one line.

Kept in a module of its own, importing nothing, so every layer (``data/`` included, which depends on no
other part of the package) can raise them.
"""


class UserError(Exception):
    """Something the user can fix; the message names the key or path, the bad value and what is valid."""
