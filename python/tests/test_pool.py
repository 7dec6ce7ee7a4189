"""Pools between processes: every frame verified, views scoped to frames."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dmabroker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def expected(n, size):
    a = np.full(size, n % 251, np.uint8)
    a[:8] = np.frombuffer(n.to_bytes(8, "little"), np.uint8)
    return a


def test_300_frames_from_a_producer_process(tmpdir_world):
    path = str(tmpdir_world / "p.pool")
    size = 1 << 20
    producer = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "producer.py"), path, "--frames", "300", "--size", str(size)],
        stderr=subprocess.PIPE,
    )
    try:
        consumer = None
        for _ in range(200):
            try:
                consumer = dmabroker.Consumer(path)
                break
            except dmabroker.NotFound:
                import time
                time.sleep(0.02)
        assert consumer is not None
        seen = []
        with consumer:
            for frame in consumer:
                a = frame.array()
                assert frame.meta == frame.seq and frame.bytes_used == size
                assert np.array_equal(a, expected(frame.meta, size)), f"frame {frame.seq} corrupt"
                assert frame.valid and frame.timestamp_ns > 0
                seen.append(frame.seq)
                del a
        assert seen == list(range(seen[0], seen[0] + 300)) and len(seen) == 300
    finally:
        assert producer.wait(30) == 0, producer.stderr.read().decode()
        producer.stderr.close()


def test_frames_in_process_keep_release_and_scope(tmpdir_world):
    path = str(tmpdir_world / "q.pool")
    with dmabroker.Producer(path, size=4096, buffers=4) as producer:
        # Attach: the producer serves the handshake while it waits.
        import threading
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("c", dmabroker.Consumer(path)))
        t.start()
        assert producer.wait_for_consumers(1, timeout=5)
        t.join()
        consumer = box["c"]
        with consumer:
            for n in range(3):
                with producer.frame(meta=n, bytes_used=100) as view:
                    view[:4] = n.to_bytes(4, "little")
            first = consumer.recv(timeout=1).keep()
            assert first.meta == 0 and len(first.data) == 100 and first.data.readonly
            second = consumer.recv(timeout=1)
            assert consumer.held == 2
            kept = first.array()
            with pytest.raises(BufferError):
                first.release()  # a numpy view is alive: the frame stays held
            assert consumer.held == 2
            del kept
            first.release()
            with pytest.raises(ValueError):
                first.data[0]  # released with its frame
            with second:
                assert bytes(second.data[:4]) == (1).to_bytes(4, "little")
            assert consumer.held == 0
            third = consumer.recv(timeout=1)
            with pytest.raises(dmabroker.Timeout):
                consumer.recv(timeout=0.05)  # also releases nothing kept
            third.release()
            with pytest.raises(BufferError):
                with producer.frame() as view:
                    leaked = np.asarray(view)
            del leaked
            producer.close()
            with pytest.raises(dmabroker.Closed):
                consumer.recv(timeout=1)
