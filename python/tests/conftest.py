"""Shared fixtures: every test leaves no fd and no buffer mapping behind."""
import gc
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("DMABROKER_BIN", ROOT / "target/x86_64-unknown-linux-gnu/release/dmabroker"))


def skip(reason: str, name: str = ""):
    """Skip with the project's `SKIP <test>: <reason>` line; in the VM a skip is a failure."""
    print(f"SKIP {name}: {reason}")
    if os.environ.get("DMABROKER_VM") == "1":
        pytest.fail(f"in the VM nothing may be skipped: {reason}")
    pytest.skip(reason)


def _fds():
    return sorted(os.listdir("/proc/self/fd"))


def _buffer_maps():
    with open("/proc/self/maps") as f:
        return sorted(l.split()[-1] for l in f if "/memfd:" in l or "dmabuf" in l or "/dev/" in l or "hugepages" in l)


@pytest.fixture(autouse=True)
def no_leaks():
    gc.collect()
    fds, maps = _fds(), _buffer_maps()
    yield
    gc.collect()
    assert _fds() == fds, "file descriptors leaked"
    assert _buffer_maps() == maps, "buffer mappings leaked"


@pytest.fixture
def tmpdir_world():
    d = tempfile.mkdtemp(prefix="dmabroker-py-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def broker(tmpdir_world):
    """A broker from the release build on a private socket."""
    if not CLI.exists():
        skip(f"{CLI} not built (cargo build --release)", "broker")
    sock = tmpdir_world / "broker.sock"
    proc = subprocess.Popen([str(CLI), "serve", "--socket", str(sock)], stderr=subprocess.PIPE)
    # Ready when it answers: the socket file appears at bind(), before listen().
    import dmabroker
    for _ in range(400):
        try:
            dmabroker.Client(str(sock)).close()
            break
        except dmabroker.BrokerError:
            if proc.poll() is not None:
                break
            time.sleep(0.01)
    else:
        proc.kill()
        raise RuntimeError(f"broker did not answer within 4 s: {proc.stderr.read().decode()}")
    if proc.poll() is not None:
        raise RuntimeError(f"broker exited: {proc.stderr.read().decode()}")
    yield str(sock)
    proc.terminate()
    proc.wait(10)
    proc.stderr.close()
