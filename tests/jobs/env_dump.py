"""Print, as JSON on stdout, the environment this job sees and what it finds on disk."""

import json
import os
import stat

descriptor = os.environ.get("BATCH_JOB_PROGRESS_FD", "")
progress_is_pipe = descriptor.isdigit() and stat.S_ISFIFO(os.fstat(int(descriptor)).st_mode)
report = {
    "environ": dict(os.environ),
    "tmpdir_is_dir": os.path.isdir(os.environ.get("TMPDIR", "/nonexistent")),
    "progress_fd_is_pipe": progress_is_pipe,
}
print(json.dumps(report, ensure_ascii=False))
