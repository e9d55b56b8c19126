"""Errors that reach the user as one clear line (exit status 2), never as a traceback."""


class UserError(Exception):
    """Bad input or an unreachable request: the CLI prints the message and exits 2."""


class VerificationError(Exception):
    """The pruned model is not the original minus the removed channels: never written."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
