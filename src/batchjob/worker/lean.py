"""The worker's code imported without Python's OpenSSL modules, which it does not use.

SQLAlchemy imports asyncio, which imports `ssl`, and `hashlib`, which loads `_hashlib`: both
bring in OpenSSL (libcrypto, and libssl for `ssl`), 4.4 MiB of an idle worker's 44 on
SQLite. The worker's own code needs neither: SQLite has no network, and hashlib falls back
to Python's built-in digests. They are kept out only while that code is imported, and while
psycopg is, whose TLS is libpq's own: a driver imported afterwards that wants `ssl` gets it
(PyMySQL for its TLS, which it also tries unasked), and mysqlclient's libmariadb maps
OpenSSL for its own TLS.
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


def driver_imported_without_openssl(database_url: str) -> None:
    """psycopg, when it is the database's driver, imported with `ssl` kept out: 4.1 MiB less.

    Its compiled libpq wrappers import `ssl` only so that Python sets up OpenSSL's locking
    callbacks before libpq would (which OpenSSL 1.1 and later no longer has); libpq does the
    TLS itself, and they take an absent `ssl` as it is. Its pure-Python wrapper fails
    without it: psycopg is then left to be imported as usual, by the store.
    """
    from batchjob.errors import ConfigError
    from batchjob.store.dialects import normalise_url

    try:
        driver = normalise_url(database_url).get_driver_name()
    except ConfigError:
        return  # the worker reports it
    if driver != "psycopg":
        return
    with contextlib.suppress(ImportError), openssl_kept_out():
        import psycopg  # noqa: F401
