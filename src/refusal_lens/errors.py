"""The one error type a person sees: a one-line message saying what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user. The CLI prints the message (no traceback) and exits with 2."""
