"""Type stubs of the native module (re-exported by ``dmabroker``)."""
from os import PathLike
from typing import Any, Iterator, Optional, Sequence, TypedDict, Union



import sys
if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

def heaps() -> list[dict[str, Any]]:
    """The heaps this machine has (``name``, ``kind``, ``usable``, ``free_bytes``, ``page_size``, ``note`` ...)."""

def alloc(
    size: int,
    heap: Optional[str] = None,
    *,
    contiguous: bool = False,
    align: Optional[int] = None,
    name: Optional[str] = None,
    coherent: bool = True,
) -> Buffer:
    """Allocate ``size`` bytes from ``heap`` (``"memfd"`` when None)."""

def alloc_for(
    format: str,
    width: int,
    height: int,
    *,
    devices: Sequence[str] = ...,
    stride_align: int = 1,
    name: Optional[str] = None,
) -> Allocation:
    """Allocate an image of pixel ``format`` for ``devices``; buffers and plane layout."""

class Access:
    """The context manager of :meth:`Buffer.read` / :meth:`Buffer.write`."""
    def __enter__(self) -> memoryview: ...
    def __exit__(self, *exc: Any) -> bool: ...

class Buffer:
    """A buffer of memory behind a file descriptor (memfd, hugetlb memfd or dma-buf)."""
    @staticmethod
    def from_fd(fd: int) -> Buffer:
        """Adopt a buffer by fd (duplicated: the caller keeps its own)."""
    @property
    def fd(self) -> int:
        """The fd (borrowed: valid until the buffer is closed)."""
    def fileno(self) -> int: ...
    def dup(self) -> int:
        """A new fd of the buffer, owned by the caller."""
    @property
    def size(self) -> int: ...
    def __len__(self) -> int: ...
    @property
    def kind(self) -> str:
        """``"memfd"``, ``"hugetlb-memfd"`` or ``"dma-buf"``."""
    @property
    def heap(self) -> str: ...
    @property
    def name(self) -> Optional[str]: ...
    @property
    def inode(self) -> int: ...
    @property
    def readonly(self) -> bool:
        """True when the fd is read-only (a read-only grant)."""
    @property
    def access(self) -> Optional[str]:
        """For imports: ``"ro"`` or ``"rw"``."""
    @property
    def publisher_uid(self) -> Optional[int]: ...
    @property
    def broker_id(self) -> Optional[int]: ...
    @property
    def closed(self) -> bool: ...
    def info(self) -> dict[str, Any]: ...
    def read(self) -> Access:
        """``with buf.read() as view:``: a read-only memoryview, released at the block's end."""
    def write(self) -> Access:
        """``with buf.write() as view:``: a writable memoryview; the end writes caches back."""
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: Optional[tuple[int, int]] = None,
        dl_device: Any = None,
        copy: Optional[bool] = None,
    ) -> Any:
        """DLPack capsule of the open ``with`` block's bytes, in place."""
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def close(self) -> None:
        """Close the fd; BufferError while views are alive."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: Any) -> bool: ...

class Allocation:
    """What :func:`alloc_for` returns."""
    @property
    def buffers(self) -> list[Buffer]: ...
    @property
    def buffer(self) -> Buffer: ...
    @property
    def planes(self) -> list[dict[str, int]]:
        """``buffer``, ``offset``, ``bytesperline``, ``lines``, ``size`` per plane."""
    @property
    def format(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def heap(self) -> str: ...
    @property
    def reasons(self) -> list[str]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: Any) -> bool: ...

class CgroupRuleStats(TypedDict):
    """One ``[[cgroup]]`` policy rule matching the client (:meth:`Client.cgroup_stats`)."""
    rule: str
    line: int
    unit: str
    used_bytes: int
    used_buffers: int
    max_bytes: Optional[int]
    max_buffers: Optional[int]
    heaps: Optional[list[str]]
    publish: Optional[bool]

class CgroupStats(TypedDict):
    """The client's cgroup as the broker sees it (:meth:`Client.cgroup_stats`)."""
    path: Optional[str]
    unknown: Optional[str]
    refused: bool
    used_bytes: int
    used_buffers: int
    rules: list[CgroupRuleStats]

class Client:
    """A connection to the broker (socket None: $DMABROKER_SOCKET, $XDG_RUNTIME_DIR, /run/dmabroker)."""
    def __init__(self, socket: Union[str, PathLike[str], None] = None) -> None: ...
    def alloc(self, size: int, heap: str = "memfd", *, name: Optional[str] = None) -> Buffer: ...
    def publish(
        self,
        buffer: Buffer,
        name: Optional[str] = None,
        *,
        allow: Sequence[str] = ...,
        one_shot: bool = False,
        expires: Optional[float] = None,
    ) -> str:
        """Publish; ``allow``: ``"uid=1000:ro"``, ``"gid=44:rw"``, ``"any:ro"``. Returns the key."""
    def import_(self, key: str) -> Buffer: ...
    def unpublish(self, key: str) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def cgroup_stats(self) -> Optional[CgroupStats]:
        """What the broker charges to this process's cgroup; None from a broker before protocol version 4."""
    def list(self) -> list[dict[str, Any]]: ...
    @property
    def server(self) -> tuple[str, int]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: Any) -> bool: ...

class WriteFrame:
    """The context manager of :meth:`Producer.frame`."""
    def __enter__(self) -> memoryview: ...
    def __exit__(self, *exc: Any) -> bool: ...
    @property
    def seq(self) -> Optional[int]: ...

class Producer:
    """The producing end of a pool."""
    def __init__(
        self,
        path: Optional[str] = None,
        *,
        size: int,
        buffers: int = 4,
        heap: str = "memfd",
        backpressure: str = "block",
        release_timeout: Optional[float] = 5.0,
        max_consumers: int = 8,
        name: Optional[str] = None,
    ) -> None: ...
    @property
    def path(self) -> Optional[str]: ...
    @property
    def size(self) -> int: ...
    @property
    def buffers(self) -> int: ...
    @property
    def attached(self) -> int: ...
    def wait_for_consumers(self, n: int = 1, timeout: float = 5.0) -> bool: ...
    def maintain(self) -> None: ...
    def frame(self, *, meta: int = 0, bytes_used: Optional[int] = None, timeout: Optional[float] = None) -> WriteFrame: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: Any) -> bool: ...

class Frame:
    """A received frame; views valid while it is held."""
    @property
    def data(self) -> memoryview: ...
    def array(self, dtype: Any = None, shape: Any = None) -> Any:
        """A read-only numpy array over the frame's bytes (no copy)."""
    @property
    def index(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def bytes_used(self) -> int: ...
    @property
    def meta(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def valid(self) -> bool: ...
    def keep(self) -> Self: ...
    def release(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: Any) -> bool: ...

class Consumer:
    """The consuming end of a pool; iterate it for frames."""
    def __init__(self, path: str, *, wait: str = "block", spin_us: int = 20, attach_timeout: float = 5.0) -> None: ...
    def recv(self, timeout: Optional[float] = None) -> Frame: ...
    def __iter__(self) -> Iterator[Frame]: ...
    def __next__(self) -> Frame: ...
    @property
    def held(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def buffer_size(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: Any) -> bool: ...
