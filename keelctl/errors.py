"""The one user-facing error type: raised anywhere below the CLI, shown by it as one line."""


class KeelError(Exception):
    """A problem the user can fix. The message says what is wrong and what to do."""


def first_line(e: Exception) -> str:
    """`Type: first line of the message` of an exception, short enough for a one-line error."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
