"""The refresh lock: a named lease in the `locks` table, and who holds it.

`LeaseStore` takes, renews, checks (fencing, inside a run's final transaction) and releases a
lease. Taking over the refresh lock from a dead or stale holder also marks that holder's run
`crashed`: only the holder of the refresh lock runs, so its run will never finish.

A holder id names the host, the process and when that process started:
`host:pid:start:boot:pidns:random`. A lease whose holder ran on this host, in this PID namespace
and this boot, and whose process is gone (or whose pid now belongs to a process that started at
another time) is dead for certain: it is taken over at once instead of after the stale timeout.
Across hosts (or containers with their own PID namespace) nothing can be known from here, and the
heartbeat timeout stays the only rule.

Process start times come from `/proc/<pid>/stat` (field 22, clock ticks since boot; proc(5)).
Where there is no `/proc` (macOS), a process is judged by `os.kill(pid, 0)` alone.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhirpanel.store.engine import StoreEngine, aware, iso, now_utc
from fhirpanel.store.models import Lock, Run
from fhirpanel.vocabulary import RunStatus

log = logging.getLogger(__name__)
REFRESH_LOCK = "refresh"
_PROC = Path("/proc")
_HOST_MAX = 60  # the holder column is 128 characters


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    start: str  # the process's start time in clock ticks since boot; "" when unknown
    boot: str  # the first part of the kernel's boot id; "" when unknown
    pidns: str  # the PID namespace's inode; "" when unknown
    nonce: str

    def __str__(self) -> str:
        return ":".join((self.host, str(self.pid), self.start, self.boot, self.pidns, self.nonce))

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """A holder id written by `new_holder` (None for older or foreign formats)."""
        parts = text.rsplit(":", 5)
        if len(parts) != 6 or not parts[1].isdigit():
            return None
        host, pid, start, boot, pidns, nonce = parts
        return cls(host, int(pid), start, boot, pidns, nonce)


def new_holder() -> str:
    """The id of a lease holder in this process (two calls differ: two stores in one process)."""
    pid = os.getpid()
    host = socket.gethostname()[:_HOST_MAX].replace(":", "_")
    return str(
        Holder(host, pid, process_start(pid) or "", boot_id(), pid_namespace(), os.urandom(4).hex())
    )


def lock_holder_id() -> str:
    """Who holds a lock: host, process, its start time and a random part."""
    return new_holder()


def holder_is_dead(text: str) -> bool:
    """True only when the holder surely no longer runs: same host, boot and PID namespace as
    this process, and its pid is gone or belongs to a process started at another time."""
    holder = Holder.parse(text)
    if holder is None:
        return False
    here = socket.gethostname()[:_HOST_MAX].replace(":", "_")
    if holder.host != here or holder.boot != boot_id() or holder.pidns != pid_namespace():
        return False
    if holder.pid == os.getpid():
        return False  # this process: alive, whatever its other leases say
    if not _pid_exists(holder.pid):
        return True
    started = process_start(holder.pid)
    return bool(holder.start) and started is not None and started != holder.start


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    # A zombie still answers signal 0; it is dead for our purposes.
    return _process_state(pid) != "Z"


def process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat, or None (no /proc, or no such process)."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields after `(comm)` in /proc/<pid>/stat (comm may hold spaces and parentheses)."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    close = raw.rfind(")")
    return raw[close + 1 :].split() if close >= 0 else None


def boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def pid_namespace() -> str:
    try:
        return str(os.stat(_PROC / "self/ns/pid").st_ino)
    except OSError:
        return ""


class LeaseStore(StoreEngine):
    """The `locks` table: one refresh at a time across workers, the CLI and the API."""

    def try_lock(self, holder: str, stale_seconds: float, name: str = REFRESH_LOCK) -> bool:
        """Take the lease if it is free or stale (its holder stopped heartbeating). Atomic: an
        insert, or a compare-and-swap update of a stale row."""
        now = now_utc()
        try:
            with self.session() as s:
                s.execute(
                    insert(Lock).values(name=name, holder=holder, acquired_at=now, heartbeat_at=now)
                )
            return True
        except IntegrityError:
            pass
        with self.session() as s:
            row = s.get(Lock, name)
            if row is None:  # released meanwhile: try once more next time
                return False
            beat = aware(row.heartbeat_at) or now
            previous = row.holder  # the update below refreshes `row` in the session
            dead = previous != holder and holder_is_dead(previous)
            if previous != holder and not dead and (now - beat).total_seconds() < stale_seconds:
                return False
            result = s.execute(
                update(Lock)
                .where(
                    Lock.name == name,
                    Lock.holder == previous,
                    Lock.heartbeat_at == row.heartbeat_at,
                )
                .values(holder=holder, acquired_at=now, heartbeat_at=now)
            )
            taken = bool(getattr(result, "rowcount", 0) == 1)
            if taken and previous != holder and name == REFRESH_LOCK:
                # Only the holder of the refresh lock runs: whatever is still `running` was
                # its run, and it will never finish.
                why = (
                    "its process is gone (same host)"
                    if dead
                    else f"its lease was not renewed for {stale_seconds:g}s"
                )
                s.execute(
                    update(Run)
                    .where(Run.status == RunStatus.RUNNING)
                    .values(
                        status=RunStatus.CRASHED,
                        finished_at=now,
                        error=f"the process running it stopped before finishing: {why}",
                    )
                )
        if taken and previous != holder:
            log.warning(
                "took over the %s lock from %s: %s",
                name,
                previous,
                "its process is gone" if dead else "stale",
            )
        return taken

    def heartbeat(self, holder: str, name: str = REFRESH_LOCK) -> bool:
        """Renew the lease; False when it is no longer ours (taken over as stale)."""
        with self.session() as s:
            result = s.execute(
                update(Lock)
                .where(Lock.name == name, Lock.holder == holder)
                .values(heartbeat_at=now_utc())
            )
            return bool(getattr(result, "rowcount", 0) == 1)

    @staticmethod
    def holds_lock(s: Session, holder: str, name: str = REFRESH_LOCK) -> bool:
        """Inside a run's final transaction: is the lease still ours (fencing)?"""
        row = s.get(Lock, name)
        return row is not None and row.holder == holder

    def release_lock(self, holder: str, name: str = REFRESH_LOCK) -> None:
        with self.session() as s:
            s.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))

    def lock_info(self, name: str = REFRESH_LOCK) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(Lock, name)
            if row is None:
                return None
            return {
                "holder": row.holder,
                "acquired_at": iso(row.acquired_at),
                "heartbeat_at": iso(row.heartbeat_at),
            }
