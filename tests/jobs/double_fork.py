"""Leave a daemon behind: fork, setsid, fork again; the daemon keeps stdout open and sleeps."""

import os
import time

first = os.fork()
if first == 0:
    os.setsid()
    daemon = os.fork()
    if daemon:
        print(f"daemon {daemon}", flush=True)
        os._exit(0)
    time.sleep(300)
    os._exit(0)
os.waitpid(first, 0)
print("main process exits", flush=True)
