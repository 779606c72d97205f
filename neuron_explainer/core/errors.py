"""The one exception type users can cause; the CLI turns it into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, unknown model); the message names it in one line."""
