#!/usr/bin/env python3
"""Share a buffer with another user, read-only, through the broker.

Run as root with a broker running (dmabroker serve --socket SOCK). The
publisher (this process) fills a buffer and grants uid 65534 (nobody)
read-only access; a child process switches to nobody, imports the buffer,
computes its statistics with numpy in place, and shows that it cannot write.

    python3 readonly_consumer.py SOCK
"""
import os
import sys

import numpy as np

import dmabroker


def consumer(sock: str, key: str) -> int:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    with dmabroker.Client(sock) as client, client.import_(key) as buf:
        print(f"uid {os.getuid()} imported {buf}: access {buf.access}, from uid {buf.publisher_uid}")
        with buf.read() as view:
            print("mean", np.asarray(view).mean())
        try:
            with buf.write():
                pass
        except dmabroker.PermissionDenied as e:
            print("write refused:", e)
    return 0


def main() -> int:
    sock = sys.argv[1]
    with dmabroker.Client(sock) as client, client.alloc(1 << 20, name="python-ro-demo") as buf:
        with buf.write() as view:
            np.asarray(view)[:] = 42
        key = client.publish(buf, allow=["uid=65534:ro"])
        pid = os.fork()
        if pid == 0:
            os._exit(consumer(sock, key))
        _, status = os.waitpid(pid, 0)
        client.unpublish(key)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
