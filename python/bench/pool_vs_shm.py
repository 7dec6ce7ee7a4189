#!/usr/bin/env python3
"""4K NV12 frames from one Python process to another, three ways:

- dmabroker: a pool (the producer fills the buffer in place; frames are
  handed off by index, the consumer reads the pool's buffer, zero copy);
- shm-copy: multiprocessing.shared_memory, the producer copies each frame
  into a shared slot, the index goes over a pipe;
- pickle: the frame pickled over a multiprocessing pipe.

Reports frames/s, hand-off latency p50/p99 (producer's timestamp before
hand-off -> consumer has the frame), and CPU time per frame in each process
(for dmabroker: the Python per-frame overhead of the bindings).

    target/pyenv/bin/python python/bench/pool_vs_shm.py [--seconds 3]
"""
import argparse
import multiprocessing as mp
import os
import struct
import tempfile
import time

import numpy as np

W, H = 3840, 2160
SIZE = W * H * 3 // 2  # NV12
SLOTS = 4


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def report(name, frames, wall, lat, cpu_p, cpu_c):
    return {
        "mode": name,
        "frames": frames,
        "fps": frames / wall,
        "p50_us": pct(lat, 50) / 1e3,
        "p99_us": pct(lat, 99) / 1e3,
        "producer_cpu_us": cpu_p / frames * 1e6,
        "consumer_cpu_us": cpu_c / frames * 1e6,
    }


# ---------------------------------------------------------------- dmabroker
def dmb_producer(path, frames, q):
    import dmabroker
    with dmabroker.Producer(path, size=SIZE, buffers=SLOTS) as p:
        q.put("ready")
        p.wait_for_consumers(1, timeout=10)
        c0 = time.process_time()
        for n in range(frames):
            with p.frame(meta=time.monotonic_ns(), bytes_used=SIZE) as v:
                v[:8] = struct.pack("<Q", n)  # the decoder would have written in place
        q.put(time.process_time() - c0)


def dmb(frames):
    import dmabroker
    path = os.path.join(tempfile.mkdtemp(), "bench.pool")
    q = mp.Queue()
    pr = mp.Process(target=dmb_producer, args=(path, frames, q))
    pr.start()
    q.get()
    lat = []
    with dmabroker.Consumer(path) as c:
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for f in c:
            lat.append(time.monotonic_ns() - f.meta)
            a = f.array()
            assert a[0] == n & 0xFF
            del a
            n += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pr.join()
    return report("dmabroker pool", n, wall, lat, q.get(), cpu)


# ---------------------------------------------------------------- shm copy
def shm_producer(name, frames, conn, free):
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(name=name)
    src = np.random.randint(0, 255, SIZE, dtype=np.uint8)
    slots = [np.ndarray(SIZE, np.uint8, shm.buf, offset=i * SIZE) for i in range(SLOTS)]
    c0 = time.process_time()
    for n in range(frames):
        i = free.recv()
        src[0] = n & 0xFF
        np.copyto(slots[i], src)  # the copy per frame
        conn.send((i, time.monotonic_ns()))
    conn.send(None)
    free.recv()
    del slots
    shm.close()
    conn.send(time.process_time() - c0)


def shm_copy(frames):
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=SIZE * SLOTS)
    a, b = mp.Pipe()
    fa, fb = mp.Pipe()
    pr = mp.Process(target=shm_producer, args=(shm.name, frames, b, fb))
    pr.start()
    for i in range(SLOTS):
        fa.send(i)
    slots = [np.ndarray(SIZE, np.uint8, shm.buf, offset=i * SIZE) for i in range(SLOTS)]
    lat, n = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    while (m := a.recv()) is not None:
        i, ts = m
        lat.append(time.monotonic_ns() - ts)
        assert slots[i][0] == n & 0xFF
        n += 1
        fa.send(i)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fa.send(0)
    cpu_p = a.recv()
    pr.join()
    del slots
    shm.close()
    shm.unlink()
    return report("shared_memory + copy", n, wall, lat, cpu_p, cpu)


# ---------------------------------------------------------------- pickle
def pickle_producer(frames, conn):
    src = np.random.randint(0, 255, SIZE, dtype=np.uint8)
    c0 = time.process_time()
    for n in range(frames):
        src[0] = n & 0xFF
        conn.send((time.monotonic_ns(), src))
    conn.send(None)
    conn.send(time.process_time() - c0)


def pickle_pipe(frames):
    a, b = mp.Pipe(duplex=False)
    pr = mp.Process(target=pickle_producer, args=(frames, b))
    pr.start()
    lat, n = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    while (m := a.recv()) is not None:
        ts, arr = m
        lat.append(time.monotonic_ns() - ts)
        assert arr[0] == n & 0xFF
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cpu_p = a.recv()
    pr.join()
    return report("pickle over a pipe", n, wall, lat, cpu_p, cpu)


def overhead(frames):
    """Both ends in one process, never waiting: the bindings' own cost per frame."""
    import threading
    import dmabroker
    path = os.path.join(tempfile.mkdtemp(), "overhead.pool")
    with dmabroker.Producer(path, size=SIZE, buffers=SLOTS) as p:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("c", dmabroker.Consumer(path)))
        t.start()
        p.wait_for_consumers(1, timeout=10)
        t.join()
        with box["c"] as c:
            send = recv = 0.0
            for n in range(frames):
                t0 = time.perf_counter()
                with p.frame(meta=n):
                    pass
                t1 = time.perf_counter()
                f = c.recv()
                a = f.array()
                a[0]
                del a
                f.release()
                t2 = time.perf_counter()
                send += t1 - t0
                recv += t2 - t1
    return send / frames * 1e6, recv / frames * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3000, help="dmabroker frames (the copies run a tenth)")
    args = ap.parse_args()
    mp.set_start_method("fork")
    rows = [dmb(args.frames), shm_copy(max(50, args.frames // 10)), pickle_pipe(max(50, args.frames // 10))]
    print(f"4K NV12 ({SIZE} bytes per frame), {SLOTS} slots, Python {'.'.join(map(str, os.sys.version_info[:3]))}")
    print("| mode | frames | frames/s | latency p50 | latency p99 | producer CPU/frame | consumer CPU/frame |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['frames']} | {r['fps']:.0f} | {r['p50_us']:.1f} us | {r['p99_us']:.1f} us "
              f"| {r['producer_cpu_us']:.1f} us | {r['consumer_cpu_us']:.1f} us |")
    send, recv = overhead(args.frames)
    print(f"bindings' per-frame overhead (one process, no waiting): producer frame() {send:.1f} us, "
          f"consumer recv()+array()+release() {recv:.1f} us")
    print(f"dmabroker / shared_memory+copy frames/s: {rows[0]['fps'] / rows[1]['fps']:.1f}x; "
          f"/ pickle: {rows[0]['fps'] / rows[2]['fps']:.1f}x")


if __name__ == "__main__":
    main()
