"""The lock that makes deciding and moving ``champion`` one critical section across processes and machines.

Which lock guards a model's promotions (:func:`lock_target`):

- ``MEDGAN_REGISTRY_LOCK_URI`` when set, else ``registry.lock_uri``, else the tracking URI itself when it names a
  database or a local store;
- a PostgreSQL URI (``postgresql://``, ``postgresql+psycopg2://``, ``postgres://``): a session-level advisory lock,
  ``pg_advisory_lock(key)`` with a 64-bit key derived from the model name. PostgreSQL releases it when the holding
  connection ends, so a killed process never leaves it held. For the documented deployment (pipeline -> HTTP
  tracking server -> PostgreSQL backend store) the lock URI names that same database: the client cannot learn the
  server's backend store over HTTP. Advisory locks need no table privilege, only CONNECT;
- ``sqlite:///path/mlflow.db``: ``fcntl.flock`` on ``path/mlflow.db.<model>.promotion.lock`` beside the database
  (processes on one machine, which is what SQLite serves); ``file:///dir`` or a plain path: a lock file in it;
- an ``http(s)://`` tracking server and no lock URI: **no lock**. Promotion falls back to an optimistic
  compare-and-set (re-read the champion right before and after moving it, re-take the decision when it moved,
  retry), which narrows the race but cannot close it: two writers interleaving within one round trip can still
  overwrite each other. A :class:`UnlockedPromotionWarning` says so, and the audit record names the lock used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from components.errors import RegistryError
from components.filelock import flock, wait_for

LOCK_URI_ENV = "MEDGAN_REGISTRY_LOCK_URI"
PG_SCHEMES = ("postgresql", "postgres")


class UnlockedPromotionWarning(UserWarning):
    """Promotions of this model are not serialized: only the optimistic compare-and-set protects them."""


@dataclass(frozen=True)
class LockTarget:
    """What guards a model's promotions: ``kind`` postgresql | file | none, ``where`` (no password), its key."""

    kind: str
    where: str
    uri: str = ""  # connection URI (PostgreSQL) or lock-file path (file); may hold a password: never logged
    key: int = 0  # advisory-lock key (PostgreSQL)

    def describe(self) -> str:
        """One line for audit records and messages."""
        if self.kind == "postgresql":
            return f"postgresql advisory lock {self.key} on {self.where}"
        if self.kind == "file":
            return f"file lock {self.where}"
        return f"none ({self.where}): optimistic compare-and-set only"


def advisory_key(model_name: str) -> int:
    """A signed 64-bit advisory-lock key for the model (the same in every process and machine)."""
    digest = hashlib.sha256(f"medgan-promotion:{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_target(tracking_uri: str, model_name: str, lock_uri: str = "") -> LockTarget:
    """The lock guarding ``model_name``'s promotions for this tracking URI (see the module docstring)."""
    uri = os.environ.get(LOCK_URI_ENV) or lock_uri or tracking_uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme in PG_SCHEMES:
        parts = urlsplit(uri)
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        return LockTarget("postgresql", where, dsn, advisory_key(model_name))
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    if scheme == "sqlite":
        db = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if db is None or not str(db) or str(db) == ":memory:":
            raise RegistryError(f"cannot lock promotions on the SQLite store {uri!r}: it names no database file")
        path = db.with_name(f"{db.name}.{safe}.promotion.lock")
        return LockTarget("file", str(path), str(path))
    if scheme in ("http", "https", "databricks"):
        why = f"tracking server {urlsplit(uri).netloc or uri} and no {LOCK_URI_ENV} / registry.lock_uri"
        return LockTarget("none", why)
    if scheme == "file" or not scheme:
        base = Path(urlsplit(uri).path if scheme else uri)
        if base.suffix == ".lock":  # an explicit lock file
            return LockTarget("file", str(base), str(base))
        path = base / f".{safe}.promotion.lock"
        return LockTarget("file", str(path), str(path))
    raise RegistryError(
        f"no promotion lock for the store {uri.split('://')[0]}://...; set {LOCK_URI_ENV} or registry.lock_uri to "
        "a postgresql:// database or a file:///path.lock shared by every process that promotes"
    )


@contextlib.contextmanager
def promotion_lock(target: LockTarget, timeout_s: float = 300.0) -> Iterator[LockTarget]:
    """Hold the promotion lock of ``target`` for the body; a ``RegistryError`` after ``timeout_s`` of waiting."""
    if target.kind == "postgresql":
        with _pg_lock(target, timeout_s):
            yield target
    elif target.kind == "file":
        with flock(target.uri, timeout_s, _timed_out(timeout_s, target.describe())):
            yield target
    else:
        warnings.warn(
            f"promotions are not serialized: {target.describe()}. Set {LOCK_URI_ENV} (or registry.lock_uri) to the "
            "tracking server's PostgreSQL backend store so that concurrent pipelines cannot overwrite each other's "
            "champion",
            UnlockedPromotionWarning,
            stacklevel=3,
        )
        yield target


def _timed_out(timeout_s: float, what: str) -> Callable[[], RegistryError]:
    return lambda: RegistryError(f"timed out after {timeout_s:g} s waiting for the promotion lock ({what})")


@contextlib.contextmanager
def _pg_lock(target: LockTarget, timeout_s: float) -> Iterator[None]:
    import psycopg2

    try:
        conn = psycopg2.connect(target.uri, connect_timeout=10, application_name="medgan-promotion")
    except psycopg2.Error as exc:
        raise RegistryError(f"cannot reach the promotion lock database {target.where}: {exc}".strip()) from None
    conn.autocommit = True
    try:
        cur = conn.cursor()

        def attempt() -> bool:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (target.key,))
            return bool(cur.fetchone()[0])

        wait_for(attempt, timeout_s, _timed_out(timeout_s, target.describe()))
        try:
            yield
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (target.key,))
    finally:
        conn.close()  # ends the session: PostgreSQL drops any advisory lock it still held
