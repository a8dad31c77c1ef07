"""Read stdin to its end and say what came; exit 1 unless it was empty at once."""

import sys

data = sys.stdin.read()
print(f"stdin: {data!r}")
sys.exit(0 if data == "" else 1)
