#!/usr/bin/env python3
"""A Python pool consumer: per-frame numpy statistics on the pool's own
buffers (zero copy), and latency from the producer's hand-off timestamp.

    python3 producer.py /tmp/demo.pool --frames 300 &      # or: dmabroker demo ...
    python3 consumer_stats.py /tmp/demo.pool
"""
import sys
import time

import dmabroker


def main() -> int:
    path = sys.argv[1]
    frames = 0
    with dmabroker.Consumer(path) as consumer:
        for frame in consumer:  # ends when the producer closes the pool
            a = frame.array()  # read-only numpy view of the frame, no copy
            mean, lo, hi = float(a.mean()), int(a.min()), int(a.max())
            latency_us = (time.monotonic_ns() - frame.timestamp_ns) / 1e3
            if frames % 30 == 0:
                print(f"seq {frame.seq:5d} mean {mean:7.2f} min {lo:3d} max {hi:3d} latency {latency_us:8.1f} us")
            del a
            frames += 1
    print(f"{frames} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
