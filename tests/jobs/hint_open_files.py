"""Open files until the limit refuses one (EMFILE), hold them SECONDS, then fail with it."""

import sys
import time

seconds = float(sys.argv[1])
files: list[object] = []
try:
    while True:
        files.append(open("/dev/null", "rb"))  # noqa: SIM115 - held on purpose
except OSError:
    print(f"holding {len(files)} files", flush=True)
    time.sleep(seconds)  # long enough for the worker to sample the peak
    raise
