"""The state store (SQLAlchemy 2; SQLite by default, PostgreSQL by URL)."""

from fhirpanel.store.repository import REFRESH_LOCK, Store, StoreError, StoreLedger, lock_holder_id

__all__ = ["REFRESH_LOCK", "Store", "StoreError", "StoreLedger", "lock_holder_id"]
