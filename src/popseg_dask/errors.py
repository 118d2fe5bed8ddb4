"""The one exception type users see.

A :class:`PopsegError` is a user mistake or an unusable input: the CLI prints its
message on one line and exits non-zero, without a traceback (``--debug`` shows it).
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PopsegError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
