"""Ask systemd about a unit: the one place that runs `systemctl show`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

TIMEOUT_SECONDS = 10


def show(unit: str, properties: Sequence[str]) -> dict[str, str] | None:
    """The unit's properties, or None where systemd cannot be asked (no systemctl, no bus)."""
    if shutil.which("systemctl") is None:
        return None
    command = ["systemctl", "show", "-p", ",".join(properties), unit]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return dict(line.partition("=")[::2] for line in done.stdout.splitlines() if "=" in line)
