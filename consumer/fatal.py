"""The one error that stops the service: a condition restarting will not fix on its own."""

from __future__ import annotations

from consumer.clients.seam import ClientError, Failure
from consumer.settings import Settings


class FatalError(Exception):
    """Bad credentials, a certificate that is not trusted, a missing ACL or topic: exit 1 with advice."""


def fatal_message(err: ClientError, settings: Settings) -> str:
    """What went wrong and which setting or ACL fixes it."""
    name, failure = err.name, err.failure
    if failure is Failure.FENCED:
        # A fence on a transaction younger than the transaction timeout (older ones are the
        # broker's own abort after an outage, survived in delivery.survive_fence).
        return (
            f"{name}: another instance took over this instance's transactional id; "
            "give each instance its own TDM_INSTANCE_ID"
        )
    if failure is Failure.NOT_AUTHORISED_GROUP:
        return (
            f"{name}: not authorised to use consumer group {settings.group_id} (TDM_GROUP_ID): "
            f"grant READ on Group:{settings.group_id} (README 'Security')"
        )
    if failure is Failure.NOT_AUTHORISED_TRANSACTIONAL_ID:
        return (
            f"{name}: not authorised to use transactional id {settings.group_id}-{settings.instance_id}: "
            f"grant WRITE on TransactionalId prefixed {settings.group_id}- (README 'Security'), "
            "or set TDM_DELIVERY=at_least_once"
        )
    if failure is Failure.NOT_AUTHORISED_TOPIC:
        return f"{name}: not authorised for a topic this service reads or writes (README 'Security')"
    if failure is Failure.NOT_AUTHORISED_CLUSTER:
        return f"{name}: not authorised for a cluster operation (README 'Security')"
    return f"{name}: {err.detail[:300]} (check credentials and ACLs; restarting will not help)"
