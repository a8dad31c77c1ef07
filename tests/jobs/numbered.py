"""Write COUNT numbered lines (`line 00000000`...) to stdout in large writes, like cat.

With LAST, the last LAST lines come as one final burst a moment after the rest (a job
printing its summary), so the log's tail ends with one large chunk.
"""

import os
import sys
import time


def write_lines(first: int, end: int) -> None:
    view = memoryview("".join(f"line {number:08d}\n" for number in range(first, end)).encode())
    while view:
        view = view[os.write(1, view) :]


count = int(sys.argv[1])
last = int(sys.argv[2]) if len(sys.argv) > 2 else 0
write_lines(0, count - last)
if last:
    time.sleep(0.3)
    write_lines(count - last, count)
