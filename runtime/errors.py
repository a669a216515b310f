"""One exception type for problems the user can fix; the CLI prints its message as one line."""


class NanotrtError(Exception):
    """A user-facing error: the message names the problem and the fix."""
