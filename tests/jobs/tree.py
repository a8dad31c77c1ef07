"""A job with a child and a grandchild: python -> sh -> sleep, all waiting."""

import subprocess

print("starting the tree", flush=True)
subprocess.run(["/bin/sh", "-c", "sleep 300 & wait"], check=False)
