"""dmabroker's exceptions: one base class, each also its builtin twin.

::

    Error                      every dmabroker failure
    ├── InvalidArgument        (ValueError)       bad size, alignment, name, format, grant ...
    ├── NotFound               (LookupError)      no such heap, publication or producer
    ├── PermissionDenied       (PermissionError)  policy, grant, read-only fd
    ├── OutOfMemory            (MemoryError)      heap, quota, huge pages
    ├── BrokerError            (ConnectionError)  broker unreachable, protocol
    └── PoolError                                 pool producer / consumer
        ├── Closed                                the other end closed the pool
        ├── Evicted                               a frame was held past the release timeout
        └── Timeout            (TimeoutError)     nothing arrived within the timeout

Views of buffer memory that outlive their scope raise the builtin
``BufferError`` (see ``Buffer.read``); a closed object raises ``ValueError``.
"""


class Error(Exception):
    """Every dmabroker failure; the message is the library's, cause and fix."""


class InvalidArgument(Error, ValueError):
    """A bad argument: size, alignment, name, pixel format, grant ..."""


class NotFound(Error, LookupError):
    """No such heap, publication or producer."""


class PermissionDenied(Error, PermissionError):
    """Refused by the broker's policy, a grant, or the fd's mode."""


class OutOfMemory(Error, MemoryError):
    """A heap, a quota or the huge-page pool is exhausted."""


class BrokerError(Error, ConnectionError):
    """The broker is unreachable, refused the session, or broke protocol."""


class PoolError(Error):
    """A pool producer or consumer failed."""


class Closed(PoolError):
    """The other end closed the pool (or this object was closed)."""


class Evicted(PoolError):
    """This consumer held a frame past the pool's release timeout."""


class Timeout(PoolError, TimeoutError):
    """Nothing happened within the timeout."""


__all__ = [
    "Error", "InvalidArgument", "NotFound", "PermissionDenied", "OutOfMemory",
    "BrokerError", "PoolError", "Closed", "Evicted", "Timeout",
]
