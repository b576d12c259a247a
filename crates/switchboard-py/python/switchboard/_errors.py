"""The exceptions of switchboard: one class per kind of client error.

Every exception is a :class:`SwitchboardError`; its message is the Rust
client's, and ``code`` is the protocol error code's name (``"TIMEOUT"``,
``"NO_SUCH_CLIENT"``, ...) or ``None`` when the error has none.
"""

from typing import Optional

__all__ = [
    "SwitchboardError",
    "RequestTimeout",
    "NoSuchClient",
    "Forbidden",
    "Disconnected",
    "AuthFailed",
    "Fenced",
    "ClientClosed",
    "HubNotFound",
    "ConnectFailed",
    "TargetGone",
    "QueueFull",
    "VersionMismatch",
    "InvalidArgument",
    "LimitExceeded",
    "Missing",
    "NotListening",
    "NoResponders",
    "RemoteError",
    "TakenOver",
    "UnsupportedVersion",
    "Fault",
    "SessionError",
]


class SwitchboardError(Exception):
    """Base class of every switchboard error."""

    code: Optional[str] = None
    """The protocol error code's name, or ``None``."""


class RequestTimeout(SwitchboardError, TimeoutError):
    """No answer arrived in time (also a built-in ``TimeoutError``)."""


class NoSuchClient(SwitchboardError):
    """The target client id is not connected to the hub."""


class Forbidden(SwitchboardError):
    """The hub does not allow this client to do this."""


class Disconnected(SwitchboardError, ConnectionError):
    """The connection to the hub is down (a reconnect may be under way)."""


class AuthFailed(SwitchboardError):
    """The hub refused the token or secret, or failed to prove it knows it."""


class Fenced(SwitchboardError):
    """The hub is of an older epoch than one already seen."""


class ClientClosed(SwitchboardError):
    """The client was closed."""


class HubNotFound(SwitchboardError):
    """Discovery found no hub serving the service."""


class ConnectFailed(SwitchboardError, ConnectionError):
    """A connection to the hub could not be made."""


class TargetGone(SwitchboardError):
    """The target left while a request to it was outstanding."""


class QueueFull(SwitchboardError):
    """The target's queue stayed full for the whole timeout."""


class VersionMismatch(SwitchboardError):
    """A compare-and-set found another version."""


class InvalidArgument(SwitchboardError, ValueError):
    """A pattern, key, id or size is not acceptable (also a ``ValueError``)."""


class LimitExceeded(SwitchboardError):
    """A hub limit was reached."""


class Missing(SwitchboardError):
    """The key or object does not exist."""


class NotListening(SwitchboardError):
    """The target is connected but does not take this kind of message now."""


class NoResponders(SwitchboardError):
    """A request to a service found no responder."""


class RemoteError(SwitchboardError):
    """The replier's handler failed; the message carries its explanation."""


class TakenOver(SwitchboardError):
    """Another connection took over this client id."""


class UnsupportedVersion(SwitchboardError):
    """The hub does not speak this client's protocol version."""


class Fault(SwitchboardError):
    """A session agent answered an RPC with a fault (``fault_code``, e.g. 8000
    for an unknown method). A session handler may raise it, with
    ``fault_code`` set, to answer with that code."""

    fault_code: Optional[int] = None
    """The fault's code."""

    def __init__(self, message: str, fault_code: Optional[int] = None) -> None:
        super().__init__(message)
        if fault_code is not None:
            self.fault_code = fault_code


class SessionError(SwitchboardError):
    """The session engine failed (its queue is full, it stopped, ...)."""
