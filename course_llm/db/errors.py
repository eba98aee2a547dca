"""Telling database failures apart, so code outside `db/` never has to import SQLAlchemy to do it.

The logging writer must decide, for every failed batch, whether *the database* is the problem
(down, restarting, locked, not migrated yet, refusing our credentials: spool the rows and retry
later) or *the rows* are (a constraint or a value the column refuses: set those rows aside and keep
the rest). The CLI must tell a database error (print one line) from a bug (let it raise).

The drivers disagree on how they report the same thing: asyncpg raises a bare `OSError` when the
server refuses the connection and a generic `DBAPIError` carrying a SQLSTATE for most server errors,
while sqlite3 reports nearly everything environmental as `OperationalError`. Both are handled here.
"""

from __future__ import annotations

import sqlite3

import asyncpg  # type: ignore[import-untyped]  # ships no type hints; only its exception classes are used
from sqlalchemy import exc as sa_exc

__all__ = ["is_database_error", "is_transient_db_error"]

#: SQLSTATE prefixes that describe the server or the environment, not the rows we sent.
_TRANSIENT_SQLSTATES = (
    "08",  # connection exception
    "28",  # invalid authorization (credentials being rotated, role not created yet)
    "3D",  # the database does not exist (yet)
    "40001",  # serialization failure
    "40P01",  # deadlock detected
    "42P01",  # undefined table: the database is not migrated yet (SQLite reports it as operational)
    "42703",  # undefined column: the database is a migration behind the code (not the rows' fault)
    "53",  # insufficient resources: disk full, too many connections
    "55P03",  # lock not available
    "57",  # operator intervention: admin shutdown, crash recovery, cannot connect now
    "58",  # system error: I/O
)


def is_transient_db_error(exc: BaseException) -> bool:
    """True when the database, not the data, made the write fail, so the same rows may succeed later.

    False for errors about the rows themselves (a constraint, a value out of range, a naive
    datetime refused before sending) and for anything that is not a database error at all.
    """
    if isinstance(exc, OSError):
        # Refused or reset connections, DNS failures, and TimeoutError (an OSError) from
        # `asyncio.wait_for` around a write or from the driver's connect timeout.
        return True
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES)
    return False


def is_database_error(exc: BaseException) -> bool:
    """True for errors raised by SQLAlchemy or a database driver (as opposed to bugs in our code)."""
    return isinstance(
        exc, sa_exc.SQLAlchemyError | sqlite3.Error | asyncpg.PostgresError | asyncpg.InterfaceError
    )
