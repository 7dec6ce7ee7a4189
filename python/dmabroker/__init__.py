"""dmabroker: zero-copy buffers and frame pools for Linux.

Buffers (memfd, hugetlb, dma-heaps, udmabuf) are file descriptors; their
bytes are reached through context managers that bracket the kernel's cache
maintenance, as memoryviews that numpy, DLPack consumers and anything taking
the buffer protocol use in place::

    import dmabroker, numpy as np
    with dmabroker.alloc(1 << 20) as buf:
        with buf.write() as view:
            np.asarray(view)[:] = 7
        with buf.read() as view:
            assert np.asarray(view).sum() == 7 << 20

Pools stream frames from a producer process to consumer processes::

    with dmabroker.Consumer("/run/user/1000/camera.pool") as consumer:
        for frame in consumer:
            print(frame.seq, frame.array().mean())

Views are valid only inside their scope: a memoryview raises ValueError once
its block ended, and a block whose views (numpy arrays made from them) are
still alive at its end raises BufferError; memory is never unmapped under a
live view.
"""

from ._errors import (
    BrokerError,
    Closed,
    Error,
    Evicted,
    InvalidArgument,
    NotFound,
    OutOfMemory,
    PermissionDenied,
    PoolError,
    Timeout,
)
from ._dmabroker import (
    Access,
    Allocation,
    Buffer,
    Client,
    Consumer,
    Frame,
    Producer,
    WriteFrame,
    alloc,
    alloc_for,
    heaps,
)

from_fd = Buffer.from_fd

__all__ = [
    "Access", "Allocation", "Buffer", "Client", "Consumer", "Frame", "Producer", "WriteFrame",
    "alloc", "alloc_for", "from_fd", "heaps",
    "BrokerError", "Closed", "Error", "Evicted", "InvalidArgument", "NotFound", "OutOfMemory",
    "PermissionDenied", "PoolError", "Timeout",
]
