"""The worker's code imported without what it does not use: Python's OpenSSL modules, and
importlib.metadata until something asks it for anything.

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
import importlib
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

KEPT_OUT = ("ssl", "_hashlib")
METADATA = "importlib.metadata"
_loading = threading.Lock()


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


class _LoadedOnFirstUse(types.ModuleType):
    """Stands in `sys.modules` for a module until it is asked for an attribute; then the
    module is imported, and the stand-in takes its contents (for those that kept it)."""

    def __getattr__(self, attribute: str) -> Any:
        with _loading:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
                self.__dict__.update(vars(importlib.import_module(self.__name__)))
        return getattr(sys.modules[self.__name__], attribute)


def metadata_loaded_on_first_use() -> None:
    """importlib.metadata, and the email, csv and zipfile it imports, left out until used: 1.4
    MiB of an idle worker on SQLite or MariaDB. SQLAlchemy imports it at start-up only for
    the entry points of dialects it has not built in, which the worker never looks up;
    importlib's LazyLoader cannot defer it, as Python 3.11's import statement reads the
    module's `__spec__`. psycopg's binary wrapper reads its own version with it at import:
    on PostgreSQL it is loaded all the same."""
    if METADATA in sys.modules:
        return
    stand_in = _LoadedOnFirstUse(METADATA)
    sys.modules[METADATA] = stand_in
    importlib.metadata = stand_in  # what `from importlib import metadata` reads
