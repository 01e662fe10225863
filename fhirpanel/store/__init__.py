"""The state store (SQLAlchemy 2; SQLite by default, PostgreSQL by URL): `Store` combines one
store per aggregate (see `fhirpanel.store.repository`)."""

from fhirpanel.store.repository import REFRESH_LOCK, Store, StoreError, StoreLedger, lock_holder_id

__all__ = ["REFRESH_LOCK", "Store", "StoreError", "StoreLedger", "lock_holder_id"]
