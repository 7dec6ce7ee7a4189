"""The broker from Python: allocation, publication, cross-uid read-only import."""
import os

import numpy as np
import pytest

import dmabroker
from conftest import skip


def test_alloc_publish_import_stats(broker):
    with dmabroker.Client(broker) as client:
        with client.alloc(1 << 16, "memfd", name="py-broker") as buf:
            assert buf.broker_id is None or buf.broker_id >= 0
            with buf.write() as v:
                v[:3] = b"abc"
            key = client.publish(buf, "py-shared")
            assert key == "py-shared"
            assert any(e["key"] == "py-shared" for e in client.list())
            with client.import_(key) as imp:
                assert imp.inode == buf.inode and imp.access == "rw"
                with imp.read() as v:
                    assert bytes(v[:3]) == b"abc"
            stats = client.stats()
            assert stats["used_buffers"] >= 1 and stats["publications"] >= 1
            client.unpublish(key)
            with pytest.raises(dmabroker.NotFound):
                client.import_(key)
            with pytest.raises(dmabroker.InvalidArgument):
                client.publish(buf, allow=["who=1:xx"])


def test_read_only_grant_to_another_uid(broker):
    if os.geteuid() != 0:
        skip("switching to uid 65534 needs root", "test_read_only_grant_to_another_uid")
    with dmabroker.Client(broker) as client, client.alloc(1 << 20) as buf:
        with buf.write() as v:
            np.asarray(v)[:] = 42
        key = client.publish(buf, allow=["uid=65534:ro"])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the consumer, as nobody
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                with dmabroker.Client(broker) as c, c.import_(key) as imp:
                    assert imp.readonly and imp.access == "ro" and imp.publisher_uid == 0
                    with imp.read() as v:
                        assert np.asarray(v).mean() == 42
                    try:
                        with imp.write():
                            pass
                    except dmabroker.PermissionDenied:
                        code = 0
                os.write(w, b"ok" if code == 0 else b"write was allowed")
            except BaseException as e:  # report to the parent
                os.write(w, repr(e).encode())
            finally:
                os._exit(code)
        os.close(w)
        msg = os.read(r, 4096).decode()
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, msg
        client.unpublish(key)


def _own_cgroup():
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def _vm_cgroup():
    """In the test VM, whose init mounts no cgroup2 (so /proc/self/cgroup has
    no `0::` line): mount it and move this process into a cgroup of its own;
    returns that cgroup's directory, or None where not in the VM."""
    if os.environ.get("DMABROKER_VM") != "1":
        return None
    import subprocess
    if _own_cgroup() is None:
        subprocess.run(["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"], check=True)
    d = f"/sys/fs/cgroup/dmabroker-pytest-{os.getpid()}"
    os.mkdir(d)
    with open(f"{d}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    return d


def test_cgroup_stats_name_the_cgroup_its_use_and_rules(tmp_path):
    """Client.cgroup_stats: the broker names this process's cgroup, what is
    charged there, and the [[cgroup]] rule that matches it with its quota."""
    from conftest import CLI
    own = _own_cgroup()
    vm_cgroup = _vm_cgroup() if own is None else None
    if vm_cgroup is not None:
        own = _own_cgroup()
    if own is None:
        skip("no cgroup v2 entry in /proc/self/cgroup", "test_cgroup_stats_name_the_cgroup_its_use_and_rules")
    if not CLI.exists():
        skip(f"{CLI} not built (cargo build --release)", "test_cgroup_stats_name_the_cgroup_its_use_and_rules")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[[user]]\nuid = {os.getuid()}\nheaps = ["memfd"]\nmax_bytes = "64MiB"\nmax_buffers = 64\npublish = true\n\n'
        f'[[cgroup]]\npath = "{own}"\nmax_bytes = "8MiB"\nmax_buffers = 16\n'
    )
    sock = tmp_path / "cg.sock"
    import subprocess
    import time
    proc = subprocess.Popen([str(CLI), "serve", "--socket", str(sock), "--policy", str(policy)],
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                dmabroker.Client(str(sock)).close()
                break
            except dmabroker.BrokerError:
                time.sleep(0.01)
        with dmabroker.Client(str(sock)) as client, client.alloc(1 << 16, "memfd") as buf:
            assert buf.size == 1 << 16
            c = client.cgroup_stats()
            assert c is not None, "a v4 broker reports the cgroup"
            assert c["path"] == own and c["unknown"] is None and c["refused"] is False
            assert c["used_bytes"] >= 1 << 16 and c["used_buffers"] >= 1
            assert len(c["rules"]) == 1, c
            r = c["rules"][0]
            assert r["rule"] == own and r["unit"] == own and r["line"] > 0
            assert r["max_bytes"] == 8 << 20 and r["max_buffers"] == 16
            assert r["used_bytes"] >= 1 << 16 and r["heaps"] is None and r["publish"] is None
    finally:
        proc.terminate()
        proc.wait(10)
        if vm_cgroup is not None:
            with open("/sys/fs/cgroup/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
            os.rmdir(vm_cgroup)
