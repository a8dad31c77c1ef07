"""Masking of secrets wherever batchjob shows or records an environment (SPEC §7)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

MASK = "***"
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
# scheme://user:password@host — the password is whatever lies between "user:" and "@".
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^@\s]*(?P<tail>@)")


@functools.lru_cache(maxsize=4096)  # the same few names, asked for every job's environment
def is_secret_name(name: str) -> bool:
    """A variable is secret when its name says so (PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL)."""
    return _SECRET_NAME.search(name) is not None


def mask_url_passwords(text: str) -> str:
    """Replace the password part of every URL in `text` with ***."""
    if "://" not in text:  # most values: no URL, and no regular expression to run
        return text
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", text)


def mask_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` safe to record or show: secret names and URL passwords masked."""
    return {
        name: MASK if is_secret_name(name) else mask_url_passwords(value)
        for name, value in env.items()
    }
