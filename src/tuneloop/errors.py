"""User-facing errors: one line that says what is wrong and what to do; the CLI prints it without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, unknown model). Message is one actionable line."""
