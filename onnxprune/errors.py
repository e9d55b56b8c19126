"""Errors that reach the user as one clear line (exit status 2), never as a traceback."""


class UserError(Exception):
    """Bad input or an unreachable request: the CLI prints the message and exits 2."""


class VerificationError(Exception):
    """The pruned model is not the original minus the removed channels: never written."""
