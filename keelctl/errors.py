"""The one user-facing error type: raised anywhere below the CLI, shown by it as one line."""


class KeelError(Exception):
    """A problem the user can fix. The message says what is wrong and what to do."""
