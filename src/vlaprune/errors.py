"""The one exception type users see: a one-line message that names the problem and the fix."""


class VlapruneError(Exception):
    """Bad input or an unsupported case. The CLI prints `vlaprune: error: <message>` and exits with 2."""
