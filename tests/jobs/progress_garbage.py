"""Write malformed progress lines between two valid ones, then finish normally."""

import os

descriptor = int(os.environ["BATCH_JOB_PROGRESS_FD"])


def send(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


send(b'{"message": "first", "current": 1, "total": 2}\n')
send(b"this is not json\n")
send(b"[1, 2, 3]\n")
send(b'{"message": "count as text", "current": "2", "total": 5}\n')
send(b"x" * (10 * 1024 * 1024) + b"\n")
send(b"\xff\xfe\x00\x01\x80binary\x00\n")
send('{"message": "最後: 第六竹石", "current": 2, "total": 2}\n'.encode())
print("still running after bad progress lines", flush=True)
