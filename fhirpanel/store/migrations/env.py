"""Alembic environment for the state store. fhirpanel runs migrations itself
(`Store.upgrade()`, on every start); the `alembic` command works too with
`-x url=sqlite:///var/fhirpanel.db` from `fhirpanel/store/`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from fhirpanel.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return str(config.attributes.get("url") or context.get_x_argument(as_dictionary=True)["url"])


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: Connection) -> None:
    # Batch mode: SQLite cannot ALTER most things in place.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
