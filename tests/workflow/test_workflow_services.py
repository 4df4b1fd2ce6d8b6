"""Services as lease files: exclusive across processes, freed when a holder dies, checked from the lease log.

Exclusivity is checked from the log (holding intervals per slot, replayed in order and by time), never
from timings; the only clock bounds are generous waits ("acquired within 10x the lease timeout").
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from appion.workflow.leases import this_host
from appion.workflow.services import (
    LeaseEvent,
    ServiceBusy,
    ServiceError,
    ServiceSpec,
    acquire_service,
    audit_lease_log,
    current_leases,
    publish_service,
    read_lease_log,
    read_service,
    retract_service,
)

REPO = Path(__file__).resolve().parents[2]


def _script(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.workflow.services_holder", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _intervals(events) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    """(scope, slot) -> [(start, end, lease_id)] from the logged times: acquire/steal start, release/steal end."""
    start: dict[str, tuple[tuple[str, str], float]] = {}
    out: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for ev in events:
        key = (ev.scope, ev.slot)
        if ev.event == "steal" and ev.previous in start:
            k, t0 = start.pop(ev.previous)
            out[k].append((t0, ev.time, ev.previous))
        if ev.event in ("acquire", "steal"):
            start[ev.lease_id] = (key, ev.time)
        elif ev.event == "release":
            k, t0 = start.pop(ev.lease_id)
            out[k].append((t0, ev.time, ev.lease_id))
    assert not start, f"never released: {start}"
    return out


def _assert_no_overlap(events) -> None:
    for key, spans in _intervals(events).items():
        spans.sort()
        for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
            assert e0 <= s1, f"slot {key} held by leases {a} [{s0}, {e0}] and {b} [{s1}, {e1}] at once"
    audit = audit_lease_log(events)
    assert audit.ok, audit


def _start_holder(root: Path, name: str, holder: str, host: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(_script("hold", str(root), name, holder, host), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, f"holder {holder} exited with {proc.wait()} before acquiring"
    return proc, json.loads(line)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()


def test_three_processes_share_two_gpus_exclusively(tmp_path):
    publish_service(ServiceSpec("gpu", ("0", "1"), per_host=True, lease_timeout_s=30), tmp_path)
    procs = [subprocess.Popen(_script("churn", str(tmp_path), "gpu", f"loop{i}", "50", "0.02"), cwd=REPO,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outs]
    assert all(len(s["slots"]) == 50 and s["lost"] == 0 for s in summaries)

    events = read_lease_log("gpu", tmp_path)
    assert sum(e.event == "acquire" for e in events) == 150
    assert sum(e.event == "release" for e in events) == 150
    assert not [e for e in events if e.event in ("steal", "lost")]
    assert {e.scope for e in events} == {this_host()}
    assert {e.slot for e in events} == {"0", "1"}
    _assert_no_overlap(events)
    assert current_leases("gpu", tmp_path) == {}


def test_killed_holder_on_another_host_expires_after_the_timeout(tmp_path):
    publish_service(ServiceSpec("licence", ("1",), per_host=False, lease_timeout_s=2), tmp_path)
    proc, got = _start_holder(tmp_path, "licence", "doomed", "other-node")
    try:
        with pytest.raises(ServiceBusy, match="doomed"):  # alive and renewing: not taken
            acquire_service("licence", tmp_path, holder="early", wait_s=0)
    finally:
        _kill(proc)
    with acquire_service("licence", tmp_path, holder="taker", wait_s=20) as lease:  # 10x the timeout
        assert lease.slot == got["slot"] == "1"
    events = read_lease_log("licence", tmp_path)
    steal = [e for e in events if e.event == "steal"]
    assert len(steal) == 1
    assert steal[0].holder == "taker" and steal[0].previous_holder == "doomed"
    assert steal[0].previous == got["lease_id"] and steal[0].reason.startswith("expired")
    _assert_no_overlap(events)


def test_killed_holder_on_this_host_is_taken_over_by_its_dead_pid(tmp_path):
    publish_service(ServiceSpec("gpu", ("0",), per_host=True, lease_timeout_s=600), tmp_path)
    proc, got = _start_holder(tmp_path, "gpu", "doomed", this_host())
    _kill(proc)
    # the timeout is 600 s: only the dead-pid check can free the slot within this wait
    with acquire_service("gpu", tmp_path, holder="taker", wait_s=30) as lease:
        assert lease.slot == "0"
    steal = [e for e in read_lease_log("gpu", tmp_path) if e.event == "steal"]
    assert [(s.previous, s.previous_holder) for s in steal] == [(got["lease_id"], "doomed")]
    assert steal[0].reason.startswith("dead pid")


def test_several_takers_of_one_stale_lease_one_wins_at_a_time(tmp_path):
    publish_service(ServiceSpec("licence", ("1",), per_host=False, lease_timeout_s=1), tmp_path)
    proc, _ = _start_holder(tmp_path, "licence", "doomed", "other-node")
    _kill(proc)
    procs = [subprocess.Popen(_script("churn", str(tmp_path), "licence", f"taker{i}", "3", "0.05"), cwd=REPO,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    events = read_lease_log("licence", tmp_path)
    assert len([e for e in events if e.event == "steal"]) == 1
    assert sum(e.event in ("acquire", "steal") for e in events) == 1 + 9
    _assert_no_overlap(events)


def test_a_live_holder_keeps_its_lease_past_the_timeout(tmp_path):
    publish_service(ServiceSpec("licence", ("1",), per_host=False, lease_timeout_s=0.6), tmp_path)
    with acquire_service("licence", tmp_path, holder="keeper", host="node-a") as lease:
        with pytest.raises(ServiceBusy, match=r"'licence'.*stayed held.*keeper"):
            acquire_service("licence", tmp_path, holder="other", host="node-b", wait_s=2.0)
        assert not lease.lost
    events = read_lease_log("licence", tmp_path)
    assert [(e.event, e.holder) for e in events] == [("acquire", "keeper"), ("release", "keeper")]


def test_a_starved_holder_finds_its_lease_lost(tmp_path):
    publish_service(ServiceSpec("licence", ("1",), per_host=False, lease_timeout_s=0.5), tmp_path)
    starved = acquire_service("licence", tmp_path, holder="starved", host="node-a")
    starved._stop.set()  # its renewal stops, as if the process were starved
    starved._thread.join()
    with acquire_service("licence", tmp_path, holder="taker", host="node-b", wait_s=5):
        starved.release()
        assert starved.lost
    events = read_lease_log("licence", tmp_path)
    assert [(e.event, e.holder) for e in events] == [("acquire", "starved"), ("steal", "taker"),
                                                     ("lost", "starved"), ("release", "taker")]
    _assert_no_overlap(events)


def test_per_host_slots_are_separate_and_release_is_idempotent(tmp_path):
    publish_service(ServiceSpec("gpu", ("0", "1"), per_host=True, lease_timeout_s=30), tmp_path)
    a0 = acquire_service("gpu", tmp_path, holder="a0", host="n1")
    a1 = acquire_service("gpu", tmp_path, holder="a1", host="n1")
    assert {a0.slot, a1.slot} == {"0", "1"}
    with pytest.raises(ServiceBusy, match="on n1"):
        acquire_service("gpu", tmp_path, holder="a2", host="n1", wait_s=0.3, poll_s=0.05)
    with acquire_service("gpu", tmp_path, holder="b0", host="n2", wait_s=0) as b0:
        assert b0.slot == "0"
        assert set(current_leases("gpu", tmp_path, host="n2")) == {"0"}
    assert set(current_leases("gpu", tmp_path, host="n1")) == {"0", "1"}
    a0.release()
    a0.release()
    with pytest.raises(RuntimeError, match="inside"):
        with acquire_service("gpu", tmp_path, holder="a3", host="n1", wait_s=0) as a3:
            assert a3.slot == a0.slot
            raise RuntimeError("inside the lease")
    a1.release()
    assert current_leases("gpu", tmp_path, host="n1") == {}
    events = read_lease_log("gpu", tmp_path)
    assert [e.holder for e in events if e.event == "release"] == ["b0", "a0", "a3", "a1"]
    _assert_no_overlap(events)


def test_publish_is_idempotent_and_republish_replaces(tmp_path):
    spec = ServiceSpec("motioncor2-licence", ("1", "2"), per_host=False, lease_timeout_s=30)
    path = publish_service(spec, tmp_path)
    assert path == tmp_path / "motioncor2-licence" / "service.json"
    mtime_ns = path.stat().st_mtime_ns
    assert publish_service(spec, tmp_path) == path and path.stat().st_mtime_ns == mtime_ns
    assert read_service("motioncor2-licence", tmp_path) == spec
    with acquire_service("motioncor2-licence", tmp_path, wait_s=0), \
            acquire_service("motioncor2-licence", tmp_path, wait_s=0):
        with pytest.raises(ServiceBusy):
            acquire_service("motioncor2-licence", tmp_path, wait_s=0)
        bigger = ServiceSpec("motioncor2-licence", ["1", "2", "3"], per_host=False, lease_timeout_s=30)
        publish_service(bigger, tmp_path)
        assert read_service("motioncor2-licence", tmp_path).slots == ("1", "2", "3")
        with acquire_service("motioncor2-licence", tmp_path, wait_s=0) as third:
            assert third.slot == "3"
    retract_service("motioncor2-licence", tmp_path)
    with pytest.raises(ServiceError, match="no service 'motioncor2-licence'"):
        acquire_service("motioncor2-licence", tmp_path, wait_s=0)
    assert len(read_lease_log("motioncor2-licence", tmp_path)) == 6  # the log outlives the descriptor


def test_unknown_services_and_bad_names(tmp_path):
    with pytest.raises(ServiceError, match=rf"'absent'.*{tmp_path}"):
        acquire_service("absent", tmp_path, wait_s=0)
    with pytest.raises(ServiceError, match="'absent'"):
        retract_service("absent", tmp_path)
    with pytest.raises(ServiceError, match="'absent'"):
        read_lease_log("absent", tmp_path)
    for bad in ("../x", "a/b", "", ".", "..", ".hidden", "x y", "-x", "x" * 101, None):
        with pytest.raises(ValueError, match="invalid service name"):
            ServiceSpec(bad, ("0",), per_host=True, lease_timeout_s=1)
        with pytest.raises(ValueError, match="invalid service name"):
            acquire_service(bad, tmp_path, wait_s=0)
        with pytest.raises(ValueError, match="invalid service name"):
            read_lease_log(bad, tmp_path)
    with pytest.raises(ValueError, match="invalid slot"):
        ServiceSpec("gpu", ("0", "../1"), per_host=True, lease_timeout_s=1)
    with pytest.raises(ValueError, match="non-empty"):
        ServiceSpec("gpu", (), per_host=True, lease_timeout_s=1)
    with pytest.raises(ValueError, match="duplicate"):
        ServiceSpec("gpu", ("0", "0"), per_host=True, lease_timeout_s=1)
    with pytest.raises(ValueError, match="lease_timeout_s"):
        ServiceSpec("gpu", ("0",), per_host=True, lease_timeout_s=0)
    publish_service(ServiceSpec("gpu", ("0",), per_host=True, lease_timeout_s=1), tmp_path)
    with pytest.raises(ValueError, match="invalid host"):
        acquire_service("gpu", tmp_path, host="../elsewhere")
    with pytest.raises(ValueError, match="invalid holder"):
        acquire_service("gpu", tmp_path, holder="two\nlines")
    with pytest.raises(ValueError, match="wait_s"):
        acquire_service("gpu", tmp_path, wait_s=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu"]  # nothing was created outside root/<name>


def test_the_audit_finds_overlaps_unreleased_and_stray_releases():
    def ev(t, event, slot, lease_id, previous=None):
        return LeaseEvent(time=t, event=event, service="gpu", slot=slot, scope="n1", holder=f"h-{lease_id}",
                          host="n1", pid=1, lease_id=lease_id, previous=previous)

    clean = [ev(1, "acquire", "0", "a"), ev(2, "acquire", "1", "b"), ev(3, "release", "0", "a"),
             ev(4, "acquire", "0", "c"), ev(5, "steal", "1", "d", previous="b"), ev(6, "release", "0", "c"),
             ev(7, "release", "1", "d")]
    assert audit_lease_log(clean).ok
    _assert_no_overlap(clean)
    overlapping = [ev(1, "acquire", "0", "a"), ev(2, "acquire", "0", "b"), ev(3, "release", "0", "a"),
                   ev(4, "release", "0", "b")]
    audit = audit_lease_log(overlapping)
    assert [(x.lease_id, y.lease_id) for x, y in audit.overlaps] == [("a", "b")]
    with pytest.raises(AssertionError, match="at once"):
        _assert_no_overlap(overlapping)
    audit = audit_lease_log([ev(1, "acquire", "0", "a"), ev(2, "release", "0", "z")])
    assert [e.lease_id for e in audit.unreleased] == ["a"] and [e.lease_id for e in audit.anomalies] == ["z"]
    wrong_steal = audit_lease_log([ev(1, "acquire", "0", "a"), ev(2, "steal", "0", "b", previous="x"),
                                   ev(3, "release", "0", "b")])
    assert [(x.lease_id, y.lease_id) for x, y in wrong_steal.overlaps] == [("a", "b")]


def test_publish_sweeps_what_killed_processes_left(tmp_path):
    spec = ServiceSpec("gpu", ("0",), per_host=True, lease_timeout_s=1)
    publish_service(spec, tmp_path)
    hdir = tmp_path / "gpu" / "hosts" / "n1"
    hdir.mkdir(parents=True)
    old = [hdir / ".tmp-0.lease-abc", hdir / "0.lease.claim-abc"]
    fresh = hdir / "0.lease.claim-def"
    for p in [*old, fresh]:
        p.write_text("1\n")
    for p in old:
        os.utime(p, (1e9, 1e9))
    publish_service(spec, tmp_path)
    assert sorted(p.name for p in hdir.iterdir()) == [fresh.name]
