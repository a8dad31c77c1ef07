"""The chaos run's job: lasts longer than a lease and writes where and when it ran.

    python job.py LEDGER SECONDS EXIT_CODE TICK

Each record is one write(2) to a file opened with O_APPEND, so records of parallel jobs never
interleave: `start|tick|end JOB_ID ATTEMPT PID WORKER_ID UNIX_TIME`. Standard library only:
the job must start as fast as a real script does.
"""

import os
import sys
import time


def main() -> int:
    ledger, seconds, exit_code, tick = (
        sys.argv[1],
        float(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    descriptor = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    who = " ".join(
        (
            os.environ["BATCH_JOB_ID"],
            os.environ["BATCH_JOB_ATTEMPT"],
            str(os.getpid()),
            os.environ["BATCH_JOB_WORKER"],
        )
    )

    def record(kind: str) -> None:
        os.write(descriptor, f"{kind} {who} {time.time():.6f}\n".encode())

    record("start")
    ends = time.monotonic() + seconds
    while (left := ends - time.monotonic()) > 0:
        time.sleep(min(tick, left))
        record("tick")
    record("end")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
