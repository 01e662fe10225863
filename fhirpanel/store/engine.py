"""The store's engine: the database connection, SQLite's pragmas, units of work (sessions),
and the schema brought to the newest Alembic migration (with the lock that keeps two processes
from migrating one database at once).

SQLite (a file under `var/`) is the embedded default; PostgreSQL by URL. Each aggregate's store
(`lease`, `runs`, `review`, `results`, `ledger`) builds on `StoreEngine` and shares its engine
and sessions; `repository.Store` combines them. Writers keep transactions short: a refresh
computes first and commits its results, the watermark and the ledger in one transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fhirpanel.errors import ConfigError, ExitCode, FhirpanelError

try:  # POSIX: the SQLite migration lock (Windows has none and migrates unguarded)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 7_301_246_173  # any constant, the same in every process
CHUNK = 500  # ids per IN (...) clause: well under SQLite's and PostgreSQL's parameter limits


class StoreError(FhirpanelError):
    """The state store cannot be opened or used (an unreachable database is not a bug)."""

    exit_code = ExitCode.STORE


def now_utc() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def iso(value: datetime | None) -> str | None:
    """A stored time as the API shows it: ISO 8601 in UTC, with a `Z`."""
    value = aware(value)
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class StoreEngine:
    """The connection every aggregate's store shares: `session()` is its unit of work."""

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"database_url is not a valid SQLAlchemy URL: {exc}") from exc
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # Threads (the worker's hook server, the API) share the engine; wait for the
            # writer's lock rather than fail at once.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    @classmethod
    def open(cls, url: str) -> Self:
        return cls(url)

    def describe(self) -> str:
        """The URL without a password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock():
            try:
                with self.engine.begin() as connection:
                    if not self.is_sqlite:
                        # The worker and the API starting together on an empty database: one
                        # migrates, the other waits.
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                        )
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
            except SQLAlchemyError as exc:
                raise StoreError(
                    f"cannot migrate the store at {self.describe()}: "
                    f"{' '.join(str(exc).split())[:300]}"
                ) from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite: processes starting together on a new file migrate one after the other. Its
        DDL commits statement by statement, so a transaction alone cannot keep a second
        process from meeting half of the first one's tables: a lock file beside it does."""
        database = make_url(self.url).database or ""
        if not self.is_sqlite or not database or database == ":memory:" or fcntl is None:
            yield
            return
        with open(f"{database}.migrate-lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back on an exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL: the API reads while a refresh writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
