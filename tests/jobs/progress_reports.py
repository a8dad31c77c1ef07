"""Report progress COUNT times through batchjob's helper, with a Japanese message.

With a third argument, report `current = COUNT - 1` of `COUNT + 1`, then sleep that many
seconds before exiting without a final report: the held-back report must still arrive.
"""

import sys
import time

from batchjob import progress

count = int(sys.argv[1])
for current in range(1, count + 1):
    progress(f"処理中: 第六竹石 {current}", current=current, total=count)
if len(sys.argv) > 2:
    progress("待機中", current=count - 1, total=count + 1)
    time.sleep(float(sys.argv[2]))
print("done", flush=True)
