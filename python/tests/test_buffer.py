"""Allocation, mapping, views and their scopes, DLPack, bad arguments."""
import os

import numpy as np
import pytest

import dmabroker
from conftest import skip

HUGE = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.fixture
def hugepages():
    """Reserve two 2 MiB pages as root for the test (restored after)."""
    try:
        before = int(open(HUGE).read())
    except OSError:
        skip("no 2 MiB huge pages on this kernel", "hugetlb")
    if os.geteuid() != 0 and before < 2:
        skip("hugetlb needs reserved pages (root: echo 2 > " + HUGE + ")", "hugetlb")
    if os.geteuid() == 0:
        with open(HUGE, "w") as f:
            f.write(str(before + 2))
    yield
    if os.geteuid() == 0:
        # Give back our two pages only (another process may have changed the pool meanwhile).
        now = int(open(HUGE).read())
        with open(HUGE, "w") as f:
            f.write(str(max(before, now - 2)))


BLOCK = (np.arange(4096) % 251).astype(np.uint8)


def roundtrip(buf):
    """Write a pattern through a writable view, read it back through a read-only one."""
    with buf.write() as view:
        assert not view.readonly and len(view) == buf.size
        np.asarray(view).reshape(-1, 4096)[:] = BLOCK
    with buf.read() as view:
        assert view.readonly
        assert (np.asarray(view).reshape(-1, 4096) == BLOCK).all()


def test_every_heap_allocates_and_maps(request):
    usable = [h for h in dmabroker.heaps() if h["usable"]]
    assert any(h["name"] == "memfd" for h in usable)
    tested = set()
    for h in usable:
        size = max(h["page_size"], 1 << 20)
        with dmabroker.alloc(size, h["name"]) as buf:
            assert buf.size >= size
            if h["device_importable"]:
                assert buf.kind == "dma-buf"  # read()/write() ran DMA_BUF_IOCTL_SYNC
            roundtrip(buf)
        tested.add(h["name"])
    for family in ("dma-heap/system", "udmabuf"):
        if family not in tested:
            print(f"SKIP {request.node.name}[{family}]: not usable on this kernel (tested in the VM)")
            if os.environ.get("DMABROKER_VM") == "1":
                pytest.fail(f"{family} not usable in the VM")
    print("heaps tested:", sorted(tested))


def test_hugetlb(hugepages):
    with dmabroker.alloc(2 << 20, "hugetlb") as buf:
        assert buf.kind == "hugetlb-memfd"
        assert buf.info()["properties"]["page_size"] == 2 << 20
        roundtrip(buf)


def test_fd_fileno_from_fd():
    with dmabroker.alloc(8192, name="py-test") as buf:
        assert buf.fileno() == buf.fd and os.fstat(buf.fd).st_size == 8192
        with buf.write() as view:
            view[:5] = b"hello"
        with dmabroker.from_fd(buf.fd) as same:
            assert same.inode == buf.inode and same.kind == "memfd"
            with same.read() as view:
                assert bytes(view[:5]) == b"hello"
        fd = buf.dup()
        try:
            assert os.pread(fd, 5, 0) == b"hello"
        finally:
            os.close(fd)


def test_view_raises_after_its_block():
    with dmabroker.alloc(4096) as buf:
        with buf.read() as view:
            pass
        with pytest.raises(ValueError):
            view[0]
        with pytest.raises(BufferError):
            with buf.write() as view:
                kept = np.asarray(view)
        kept[0] = 1  # still mapped: the memory lives as long as the view
        with pytest.raises(BufferError):
            buf.close()
        del kept
        # An exception leaving a block is not masked by the view its traceback keeps.
        with pytest.raises(ZeroDivisionError):
            with buf.write() as view:
                kept = np.asarray(view)
                1 / 0
        del kept
    assert buf.closed


def test_nested_access_refused():
    with dmabroker.alloc(4096) as buf:
        with buf.read():
            with pytest.raises(BufferError):
                with buf.write():
                    pass


def test_dlpack_in_place():
    with dmabroker.alloc(4096) as buf:
        with pytest.raises(BufferError):
            np.from_dlpack(buf)
        assert buf.__dlpack_device__() == (1, 0)
        with buf.write() as view:
            t = np.from_dlpack(buf)
            view[:3] = b"\x01\x02\x03"
            assert list(t[:3]) == [1, 2, 3]  # the tensor is the buffer's bytes, in place
            if t.flags.writeable:  # numpy >= 2.3 keeps a writable export writable
                t[3] = 4
                assert view[3] == 4
            del t
        with buf.read():
            if tuple(int(x) for x in np.__version__.split(".")[:2]) < (2, 1):
                # DLPack before 1.0 cannot say read-only: numpy refuses to export.
                with pytest.raises(BufferError):
                    np.from_dlpack(buf)
            else:
                t = np.from_dlpack(buf)
                assert not t.flags.writeable and list(t[:3]) == [1, 2, 3]
                del t


def test_alloc_for_nv12_layout():
    with dmabroker.alloc_for("NV12", 1920, 1080) as a:
        assert a.format == "NV12" and len(a.buffers) == 1
        y, uv = a.planes
        assert (y["offset"], y["bytesperline"], y["lines"]) == (0, 1920, 1080)
        assert (uv["offset"], uv["lines"]) == (1920 * 1080, 540)
        assert a.buffer.size >= 1920 * 1080 * 3 // 2
    with dmabroker.alloc_for("NV12M", 64, 64) as a:
        assert len(a.buffers) == 2 and [p["buffer"] for p in a.planes] == [0, 1]


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda: dmabroker.alloc(0), dmabroker.InvalidArgument),
        (lambda: dmabroker.alloc(4096, align=3), dmabroker.InvalidArgument),
        (lambda: dmabroker.alloc(4096, "no-such-heap"), dmabroker.NotFound),
        (lambda: dmabroker.alloc(1 << 62), dmabroker.OutOfMemory),
        (lambda: dmabroker.alloc(-1), OverflowError),
        (lambda: dmabroker.alloc_for("NOPE", 64, 64), dmabroker.InvalidArgument),
        (lambda: dmabroker.alloc_for("NV12", 0, 64), dmabroker.InvalidArgument),
        (lambda: dmabroker.alloc_for("NV12", 64, 64, devices=["/nonexistent"]), dmabroker.NotFound),
        (lambda: dmabroker.from_fd(-1), dmabroker.InvalidArgument),
        (lambda: dmabroker.from_fd(10_000), OSError),
        (lambda: dmabroker.Consumer("/nonexistent/pool"), dmabroker.NotFound),
        (lambda: dmabroker.Producer(size=4096, buffers=0), dmabroker.InvalidArgument),
        (lambda: dmabroker.Producer(size=4096, backpressure="maybe"), dmabroker.InvalidArgument),
        (lambda: dmabroker.Client("/nonexistent/broker.sock"), dmabroker.BrokerError),
    ],
)
def test_bad_arguments_raise_typed_errors(call, exc):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value)


def test_from_fd_refuses_non_buffers():
    r, w = os.pipe()
    try:
        with pytest.raises(dmabroker.InvalidArgument, match="."):
            dmabroker.from_fd(r)
    finally:
        os.close(r)
        os.close(w)


def test_errors_are_builtin_twins():
    assert issubclass(dmabroker.InvalidArgument, ValueError)
    assert issubclass(dmabroker.NotFound, LookupError)
    assert issubclass(dmabroker.PermissionDenied, PermissionError)
    assert issubclass(dmabroker.Timeout, TimeoutError)
    assert issubclass(dmabroker.Evicted, dmabroker.PoolError)
    assert issubclass(dmabroker.PoolError, dmabroker.Error)
