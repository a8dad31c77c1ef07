"""Ignore SIGTERM and sleep: only SIGKILL ends this job."""

import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(300)
