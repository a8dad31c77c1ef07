"""Write MEGABYTES MiB to PATH, one MiB at a time, as an export would."""

import sys

path, megabytes = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as export:
    for _ in range(megabytes):
        export.write(b"\0" * (1 << 20))
print(f"wrote {megabytes} MiB to {path}", flush=True)
