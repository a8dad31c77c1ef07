"""The worker's code imported without Python's OpenSSL modules, which it does not use.

SQLAlchemy imports asyncio, which imports `ssl`, and `hashlib`, which loads `_hashlib`: both
bring in OpenSSL (libcrypto, and libssl for `ssl`), 4.4 MiB of an idle worker's 44 on
SQLite. The worker's own code needs neither: SQLite has no network, and hashlib falls back
to Python's built-in digests. They are kept out only while that code is imported: a driver
imported afterwards that wants `ssl` gets it (PyMySQL for its TLS, which it also tries
unasked; psycopg, which sets up OpenSSL through it), and mysqlclient's libmariadb maps
OpenSSL for its own TLS. So the saving is SQLite's; 1.2 MiB on MariaDB through mysqlclient.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

KEPT_OUT = ("ssl", "_hashlib")


@contextlib.contextmanager
def openssl_kept_out() -> Iterator[None]:
    """Imports within see `ssl` and `_hashlib` as absent (their importers all allow that);
    afterwards both can be imported again. Modules imported before are not affected."""
    blocked = [name for name in KEPT_OUT if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # the documented "not there"
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
