"""The one exception type for mistakes a user can fix (bad file, bad option).

The CLI catches it and prints its message as one line with exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: the message names the file and the fix."""

    exit_code = 2
