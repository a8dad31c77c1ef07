"""Grow touched memory by STEP MiB every PAUSE seconds up to MEGABYTES MiB, then hold it."""

import sys
import time

megabytes, step, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ballast: list[bytes] = []
while len(ballast) * step < megabytes:
    ballast.append(b"\x01" * (step << 20))
    time.sleep(pause)
print(f"holding {len(ballast) * step} MiB", flush=True)
time.sleep(10)
