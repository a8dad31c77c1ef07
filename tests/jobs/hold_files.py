"""Hold COUNT open files for SECONDS."""

import sys
import time

count, seconds = int(sys.argv[1]), float(sys.argv[2])
files = [open("/dev/null", "rb") for _ in range(count)]  # noqa: SIM115
print(f"holding {len(files)} files", flush=True)
time.sleep(seconds)
