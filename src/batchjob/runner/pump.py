"""The job's log: every byte a child writes, timestamped and stream-tagged, whatever the disk does.

A record is `<UTC time> <stream><mark> | <bytes>\\n`. The mark is a space when the record
starts a line of that stream, `+` when it continues the previous record's line (output
without a newline is written in chunks as it arrives), and `~` (with no bytes) when the
stream ended without a final newline. So the original stream is the records' bytes, each
record's newline dropped where the next record of the stream says `+` or `~`.
Work is per chunk, not per line: one `replace` puts the prefix in front of every line.

The log is capped at `max_log_bytes`: the head is kept in place, the tail in two rotating
segment files, and at the end they are joined around a marker saying how much was left out.
Both are cut only between lines, so the kept head and tail each read as unbroken records.
A full disk ends writing with a marker (room for it is made by giving back the last block)
and the job goes on; its output is still drained, only not kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field

BLOCK = 4096
COPY_BYTES = 1024 * 1024
STREAM_TAGS = {"stdout": b"out", "stderr": b"err", "batchjob": b"bjq"}
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _timestamp() -> bytes:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + b".%03dZ" % (
        int(now * 1000) % 1000
    )


@dataclass
class JobLog:
    """Writes a job's output to its log file; never raises for a disk problem."""

    path: str
    max_bytes: int
    disk_error: str | None = None
    left_out: int = 0
    _head_written: int = 0
    _open_line: dict[str, bool] = field(default_factory=dict)
    _tail_sizes: list[int] = field(default_factory=lambda: [0, 0])
    _tail_current: int = -1  # -1: still writing the head

    def __post_init__(self) -> None:
        self._earlier_attempts = False
        try:
            self._file = _open_log(self.path)
            # An earlier attempt cut off while keeping a tail (its worker killed) left its
            # segments; only a log with an earlier attempt in it can have them, and a first
            # attempt's end is spared two failing unlinks (perf: 1.3 % of a /bin/true worker).
            self._earlier_attempts = os.lseek(self._file, 0, os.SEEK_END) > 0
        except OSError as exc:  # the job runs all the same: its output is drained, not kept
            self._file = -1
            self.disk_error = os.strerror(exc.errno) if exc.errno else str(exc)
        self._head_limit = self.max_bytes // 2
        self._segment_limit = max(BLOCK, (self.max_bytes - self._head_limit) // 2)
        self._tail_paths = (f"{self.path}.tail0", f"{self.path}.tail1")

    def write(self, stream: str, data: bytes) -> None:
        """Add one chunk read from `stream`."""
        if not data:
            return
        prefix = _timestamp() + b" " + STREAM_TAGS[stream]
        ends_line = data.endswith(b"\n")
        mark = b"+ | " if self._open_line.get(stream, False) else b"  | "
        self._open_line[stream] = not ends_line
        line_start = b"\n" + prefix + b"  | "
        lines = data.replace(b"\n", line_start)
        # One copy of the chunk into the record (or two where it has lines to prefix).
        if ends_line:  # its last newline ends the record, not a line after it
            body = memoryview(lines)[: len(lines) - len(line_start) + 1]
            self._store(b"".join((prefix, mark, body)))
        else:
            self._store(b"".join((prefix, mark, lines, b"\n")))

    def note(self, message: str) -> None:
        """A line from batchjob itself (a dropped progress line, a leftover process...)."""
        self.write("batchjob", message.encode("utf-8", "replace") + b"\n")

    def close(self) -> None:
        """Mark unfinished last lines, join the kept tail to the head, close the file."""
        if self._file < 0:
            return
        for stream, open_line in self._open_line.items():
            if open_line:
                self._store(_timestamp() + b" " + STREAM_TAGS[stream] + b"~ | \n")
        if self._tail_current >= 0:
            older = 1 - self._tail_current
            self._append(
                b"%s bjq  | [batchjob: %d bytes of log left out here; the log keeps its "
                b"first and last part (max_log_bytes=%d)]\n"
                % (_timestamp(), self.left_out, self.max_bytes)
            )
            for index in (older, self._tail_current):
                if self._tail_sizes[index]:
                    self._append_file(self._tail_paths[index])
        if self._tail_current >= 0 or self._earlier_attempts:
            for tail in self._tail_paths:  # this attempt's, or an earlier one's cut off
                _remove(tail)
        os.close(self._file)
        self._file = -1

    def _store(self, record: bytes) -> None:
        if self.disk_error is not None:
            self.left_out += len(record)
            return
        if self._tail_current < 0:
            room = self._head_limit - self._head_written
            head = record if len(record) <= room else record[: record.rfind(b"\n", 0, room) + 1]
            if head:
                self._append(head)
                self._head_written += len(head)
            record = record[len(head) :]
            if not record:
                return
            self._head_written = self._head_limit  # full: from now on, everything is tail
        self._keep_in_tail(record)

    def _keep_in_tail(self, record: bytes) -> None:
        current = self._tail_current
        if len(record) > self._segment_limit:
            # Larger than a segment: it supersedes everything kept so far; keep its last
            # whole lines, so that the tail stays unbroken.
            cut = record.find(b"\n", len(record) - self._segment_limit - 1) + 1
            self.left_out += cut + sum(self._tail_sizes)
            record = record[cut:]
            self._tail_sizes = [0, 0]
            current = 0 if current < 0 else current
            self._tail_current = current
            mode = "wb"
            for index in (0, 1):
                if index != current:
                    _remove(self._tail_paths[index])
        elif current < 0 or self._tail_sizes[current] + len(record) > self._segment_limit:
            current = self._tail_current = 0 if current < 0 else 1 - current
            self.left_out += self._tail_sizes[current]
            self._tail_sizes[current] = 0
            mode = "wb"
        else:
            mode = "ab"
        if not record:
            return
        try:
            with open(self._tail_paths[current], mode) as handle:
                handle.write(record)
            self._tail_sizes[current] += len(record)
        except OSError as exc:
            self._stop_on_disk_error(exc)

    def _append(self, data: bytes) -> None:
        if self.disk_error is not None:
            return
        try:
            _write_all(self._file, data)
        except OSError as exc:
            self._stop_on_disk_error(exc)

    def _append_file(self, path: str) -> None:
        """A kept tail segment, a piece at a time: it may be a quarter of max_log_bytes."""
        try:
            with open(path, "rb") as segment:
                while piece := segment.read(COPY_BYTES):
                    self._append(piece)
        except OSError as exc:
            self._stop_on_disk_error(exc)

    def _stop_on_disk_error(self, exc: OSError) -> None:
        """Keep the job going; leave a marker in the log, giving back a block for its room."""
        self.disk_error = os.strerror(exc.errno) if exc.errno else str(exc)
        marker = (
            b"\n%s bjq  | [batchjob: log truncated here: %s; the job's further output "
            b"is not kept]\n" % (_timestamp(), self.disk_error.encode())
        )
        try:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                size = os.fstat(self._file).st_size
                os.ftruncate(self._file, max(0, size - BLOCK - len(marker)))
            _write_all(self._file, marker)
        except OSError:
            pass


def _open_log(path: str) -> int:
    try:
        return os.open(path, _LOG_FLAGS, 0o640)
    except FileNotFoundError:  # the first job's, or its directory was removed meanwhile
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, _LOG_FLAGS, 0o640)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]
