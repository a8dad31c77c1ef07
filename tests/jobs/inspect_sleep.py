"""Sleep for SECONDS in a function named `nap`."""

import sys
import time


def nap(seconds: float) -> None:
    time.sleep(seconds)


print("sleeping", flush=True)
nap(float(sys.argv[1]))
