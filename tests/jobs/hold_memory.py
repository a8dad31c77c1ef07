"""Hold MEGABYTES of touched memory for SECONDS."""

import sys
import time

megabytes, seconds = int(sys.argv[1]), float(sys.argv[2])
ballast = b"\x01" * (megabytes * 1024 * 1024)
print(f"holding {len(ballast)} bytes", flush=True)
time.sleep(seconds)
