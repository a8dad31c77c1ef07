"""Report progress COUNT times through batchjob's helper, with a Japanese message."""

import sys

from batchjob import progress

count = int(sys.argv[1])
for current in range(1, count + 1):
    progress(f"処理中: 第六竹石 {current}", current=current, total=count)
print("done", flush=True)
