"""The one error type the command line reports as bad input (one line, exit code 2)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration or usage problem the user can fix; the message is one line naming the fix."""
