"""Write BYTES_PER_STREAM bytes without a newline to stdout and stderr, 64 KiB at a time, in turn.

Each stream then ends with one newline. With a second argument, the sha256 of everything
written to each stream goes to that file as JSON, so the test can compare the job's log.
"""

import hashlib
import json
import os
import random
import sys

CHUNK = 64 * 1024


def write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def main() -> None:
    remaining = int(sys.argv[1])
    digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
    generator = random.Random(6)
    while remaining > 0:
        size = min(CHUNK, remaining)
        for descriptor, stream in ((1, "stdout"), (2, "stderr")):
            chunk = generator.randbytes(size).replace(b"\n", b"\x0b")
            write_all(descriptor, chunk)
            digests[stream].update(chunk)
        remaining -= size
    for descriptor, stream in ((1, "stdout"), (2, "stderr")):
        write_all(descriptor, b"\n")
        digests[stream].update(b"\n")
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as handle:
            json.dump({name: digest.hexdigest() for name, digest in digests.items()}, handle)


main()
