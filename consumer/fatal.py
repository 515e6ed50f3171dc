"""The one error that stops the service: a condition restarting will not fix on its own."""

from __future__ import annotations


class FatalError(Exception):
    """Bad credentials, a certificate that is not trusted, a missing ACL or topic: exit 1 with advice."""
