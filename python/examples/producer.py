#!/usr/bin/env python3
"""A Python pool producer: FRAMES frames of SIZE bytes at PATH.

Frame n is filled with the byte n % 251 and its first 8 bytes hold n
(little endian); `meta` is n too, so consumers can verify every byte.

    python3 producer.py /tmp/demo.pool --frames 300 --size 1048576 --consumers 1
"""
import argparse
import sys

import numpy as np

import dmabroker


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--buffers", type=int, default=4)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--heap", default="memfd")
    args = ap.parse_args()
    with dmabroker.Producer(args.path, size=args.size, buffers=args.buffers, heap=args.heap) as producer:
        if not producer.wait_for_consumers(args.consumers, timeout=30):
            print("no consumer attached within 30 s", file=sys.stderr)
            return 1
        for n in range(args.frames):
            with producer.frame(meta=n, bytes_used=args.size) as view:
                a = np.frombuffer(view, np.uint8)
                a.fill(n % 251)
                a[:8] = np.frombuffer(n.to_bytes(8, "little"), np.uint8)
                del a  # views must not outlive the block
        print(producer.stats(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
