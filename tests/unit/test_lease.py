"""Lease holders: a holder on this host whose process is gone is known dead; anything that cannot
be checked from here is not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fhirpanel.store import lease
from fhirpanel.store.lease import Holder, holder_is_dead, new_holder

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


def test_a_holder_id_round_trips_and_fits_the_column() -> None:
    text = new_holder()
    holder = Holder.parse(text)
    assert holder is not None
    assert holder.pid == os.getpid()
    assert str(holder) == text
    assert len(text) <= 128
    assert new_holder() != text


def test_this_process_is_alive() -> None:
    assert not holder_is_dead(new_holder())


@needs_proc
def test_a_finished_process_on_this_host_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = lease.process_start(child.pid)
        assert start is not None
        me = Holder.parse(new_holder())
        assert me is not None
        text = str(Holder(me.host, child.pid, start, me.boot, me.pidns, "abcd"))
        assert not holder_is_dead(text)  # alive and the same start time
    finally:
        child.kill()
        child.wait(timeout=10)
    assert holder_is_dead(text)


@needs_proc
def test_a_reused_pid_with_another_start_time_is_dead() -> None:
    me = Holder.parse(new_holder())
    assert me is not None
    parent = os.getppid()
    started = lease.process_start(parent)
    assert started is not None
    other_start = str(int(started) + 1)
    assert holder_is_dead(str(Holder(me.host, parent, other_start, me.boot, me.pidns, "x1")))
    assert not holder_is_dead(str(Holder(me.host, parent, started, me.boot, me.pidns, "x1")))


def test_other_hosts_boots_and_namespaces_are_never_judged() -> None:
    me = Holder.parse(new_holder())
    assert me is not None
    gone = 2**22 + 12345  # above the default pid_max: no such process
    assert holder_is_dead(str(Holder(me.host, gone, "1", me.boot, me.pidns, "n")))
    assert not holder_is_dead(str(Holder("elsewhere", gone, "1", me.boot, me.pidns, "n")))
    assert not holder_is_dead(str(Holder(me.host, gone, "1", "00000000", me.pidns, "n")))
    assert not holder_is_dead(str(Holder(me.host, gone, "1", me.boot, "1", "n")))


def test_old_and_foreign_holder_formats_are_not_judged() -> None:
    assert not holder_is_dead("host:123:abcd")  # the format before process start times
    assert not holder_is_dead("")
    assert not holder_is_dead("a:b:c:d:e:f")
