"""Lease-file mechanics shared by every process (and node) that sees the same directory.

A held slot is one file, `<slot>.lease`, holding a JSON `LeaseRecord`.  Everything here uses only
operations that are atomic on a local filesystem and on NFS:

* create:  the record is written to a private temporary file, then hard-linked to `<slot>.lease`;
  link() fails if the name exists, so exactly one creator wins and a reader never sees a partial record.
* claim:   whoever removes or replaces a lease (its holder releasing it, or a taker stealing a stale one)
  first creates `<slot>.claim-<lease id>` with O_CREAT|O_EXCL.  Claims are named after the lease they
  are about, so two takers of the same stale lease cannot both win, and a late taker whose lease was
  already replaced only finds a different lease id under the name and backs off.  A claim left by a
  process killed inside the few file operations it guards is broken once it is older than the timeout.
* steal:   the claim owner re-reads the lease, checks it is still the one judged stale, and renames its
  own record over it (rename replaces atomically, so no third process can slip in between).
* renew:   the holder touches the lease's mtime; a lease not touched for `timeout_s` is stale.

Every acquire / release / steal / lost is appended as one short JSON line to the service's log
(`LeaseEvent`); `audit_lease_log` checks a log for two holders of one slot at once.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["LeaseRecord", "CurrentLease", "LeaseEvent", "LeaseAudit", "PID_NAMESPACE", "check_name", "check_holder",
           "this_host", "new_lease_id", "create_lease", "read_lease", "stale_reason", "claim_lease", "replace_lease", "renew_lease",
           "append_event", "read_events", "audit_lease_log"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_MAX_HOLDER_CHARS = 200


def check_name(kind: str, value: object) -> str:
    """`value` if it is a safe file name (letters, digits, . _ -, not starting with . _ -), else ValueError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"invalid {kind} {value!r}: use 1-100 of [A-Za-z0-9._-], starting with a letter or digit")
    return value


def check_holder(holder: object) -> str:
    if not isinstance(holder, str) or not holder or len(holder) > _MAX_HOLDER_CHARS or "\n" in holder:
        raise ValueError(f"invalid holder {holder!r}: a non-empty one-line string of at most {_MAX_HOLDER_CHARS} chars")
    return holder


def this_host() -> str:
    """This node's name as a safe file name (per-host services keep their leases under it)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()).lstrip("._-")[:100]
    return host or "localhost"


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


PID_NAMESPACE = _pid_namespace()


def new_lease_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class LeaseRecord:
    """The content of a lease file: who holds the slot, from where, since when (epoch seconds)."""

    lease_id: str
    service: str
    slot: str
    holder: str
    host: str
    pid: int
    acquired: float
    pid_namespace: int | None = None


@dataclass(frozen=True)
class CurrentLease:
    """A lease file as read: `identity` names it for claims (its lease id, or its inode if unreadable)."""

    identity: str
    record: LeaseRecord | None
    mtime: float


def _tmp_path(path: Path, lease_id: str) -> Path:
    return path.with_name(f".tmp-{path.name}-{lease_id}")


def _write_tmp(path: Path, record: LeaseRecord) -> Path:
    tmp = _tmp_path(path, record.lease_id)
    data = json.dumps(asdict(record), separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def create_lease(path: Path, record: LeaseRecord) -> bool:
    """Create `path` holding `record` if no lease exists there; False if one does (someone else holds it)."""
    tmp = _write_tmp(path, record)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def replace_lease(path: Path, record: LeaseRecord) -> None:
    """Put `record` in place of the lease at `path` in one step (only under a claim on that lease)."""
    os.replace(_write_tmp(path, record), path)


def read_lease(path: Path) -> CurrentLease | None:
    """The lease at `path`, or None if the slot is free."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(data)
        record = LeaseRecord(**raw)
        return CurrentLease(record.lease_id, record, st.st_mtime)
    except (ValueError, TypeError):  # not written by this module: identified by its inode and mtime
        return CurrentLease(f"ino{st.st_ino}-{st.st_mtime_ns}", None, st.st_mtime)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed process its parent has not reaped yet still answers kill(0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def stale_reason(current: CurrentLease, *, timeout_s: float, host: str, now: float | None = None) -> str | None:
    """Why the lease may be taken over ("expired ...", "dead pid ..."), or None while it is live."""
    now = time.time() if now is None else now
    age_s = now - current.mtime
    if age_s > timeout_s:
        return f"expired: not renewed for {age_s:.1f} s (timeout {timeout_s:g} s)"
    rec = current.record
    if rec is not None and rec.host == host and rec.pid_namespace == PID_NAMESPACE and rec.pid != os.getpid() \
            and _process_gone(rec.pid):
        return f"dead pid: process {rec.pid} on {host} is gone"
    return None


def claim_lease(path: Path, identity: str, *, timeout_s: float) -> Path | None:
    """The exclusive right to remove or replace the lease `identity` at `path`; None if another process has it.

    The caller must unlink the returned claim when done.  A claim older than `timeout_s` was left by a
    killed process: it is removed here (and None returned, so the caller retries on its next poll).
    """
    claim = path.with_name(f"{path.name}.claim-{identity}")
    try:
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            if time.time() - os.stat(claim).st_mtime > timeout_s:
                os.unlink(claim)
        except FileNotFoundError:
            pass
        return None
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return claim


def renew_lease(path: Path, lease_id: str) -> bool:
    """Touch the lease if it is still `lease_id`'s; False if it was taken over or removed."""
    current = read_lease(path)
    if current is None or current.identity != lease_id:
        return False
    os.utime(path)
    return True


@dataclass(frozen=True)
class LeaseEvent:
    """One line of a service's lease log.

    event: "acquire", "release", "steal" (a stale lease taken over: `previous` / `previous_holder` name
    it, `reason` says why) or "lost" (a holder found its lease taken over).  scope is the host whose
    slots these are for a per-host service, "" for a shared one; (scope, slot) names one slot.
    """

    time: float
    event: str
    service: str
    slot: str
    scope: str
    holder: str
    host: str
    pid: int
    lease_id: str
    previous: str | None = None
    previous_holder: str | None = None
    reason: str | None = None


def append_event(log: Path, event: LeaseEvent) -> None:
    """Append one JSON line with a single O_APPEND write (atomic for writers on one host)."""
    line = json.dumps({k: v for k, v in asdict(event).items() if v is not None}, separators=(",", ":")) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(log: Path) -> list[LeaseEvent]:
    """The events of `log` in the order they were appended; unparseable lines are skipped with a warning."""
    events: list[LeaseEvent] = []
    try:
        text = log.read_text()
    except FileNotFoundError:
        return events
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(LeaseEvent(**json.loads(line)))
        except (ValueError, TypeError) as e:
            warnings.warn(f"{log}:{number}: skipped an unreadable lease-log line ({e})", stacklevel=2)
    return events


@dataclass
class LeaseAudit:
    """What a lease log shows: pairs of leases that held one slot at once, leases never given back,
    and releases/steals of a lease the log does not show as holding the slot."""

    overlaps: list[tuple[LeaseEvent, LeaseEvent]] = field(default_factory=list)
    unreleased: list[LeaseEvent] = field(default_factory=list)
    anomalies: list[LeaseEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.unreleased or self.anomalies)


def audit_lease_log(events: list[LeaseEvent]) -> LeaseAudit:
    """Replay a log in order: an acquire/steal opens a holding of (scope, slot), a release/steal closes one.

    Intervals are logged inside the real holding (acquire after the lease file exists, release before
    it is removed), so a clean audit is implied by exclusive holdings, and overlaps are real.
    """
    audit = LeaseAudit()
    held: dict[tuple[str, str, str], LeaseEvent] = {}
    for ev in events:
        key = (ev.service, ev.scope, ev.slot)
        current = held.get(key)
        if ev.event == "acquire":
            if current is not None:
                audit.overlaps.append((current, ev))
            held[key] = ev
        elif ev.event == "steal":
            if current is not None and current.lease_id != ev.previous:
                audit.overlaps.append((current, ev))
            elif current is None:
                audit.anomalies.append(ev)
            held[key] = ev
        elif ev.event == "release":
            if current is not None and current.lease_id == ev.lease_id:
                del held[key]
            else:
                audit.anomalies.append(ev)
    audit.unreleased = list(held.values())
    return audit
