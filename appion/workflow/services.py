"""Services: things a site limits (GPUs, licensed programs) that tasks lease one slot of at a time.

A service is published as a descriptor under a shared directory and leased through lease files
next to it (see `appion.workflow.leases`), so leases hold across threads, processes, separate Dask
clusters and nodes that share the filesystem, with no server:

    publish_service(ServiceSpec("gpu", ("0", "1"), per_host=True, lease_timeout_s=30), root)
    with acquire_service("gpu", root, holder="motion:exp42", wait_s=600) as lease:
        run_motioncor2(..., gpu_ids=lease.slot)

Layout under root/<name>/: service.json (the ServiceSpec), leases.log (one JSON line per acquire,
release, steal, lost), and the lease files: hosts/<host>/<slot>.lease for a per-host service (each
node has its own GPUs 0 and 1), slots/<slot>.lease for a shared one (a licence pool).

While held, a daemon thread touches the lease every lease_timeout_s / 3.  A lease not touched for
lease_timeout_s (its holder or node died, or hung) is stale and the next acquirer takes it over; on the
holder's own host a lease whose process is gone is taken over at once.  Timeouts compare this node's
clock with the file's mtime (set by the file server on NFS), so keep lease_timeout_s well above the
clock skew between nodes and above the longest stretch a holder's Python threads can be starved.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appion.workflow.leases import (
    PID_NAMESPACE,
    LeaseAudit,
    LeaseEvent,
    LeaseRecord,
    append_event,
    audit_lease_log,
    check_holder,
    check_name,
    claim_lease,
    create_lease,
    new_lease_id,
    read_events,
    read_lease,
    renew_lease,
    replace_lease,
    stale_reason,
    this_host,
)

__all__ = ["ServiceSpec", "ServiceError", "ServiceBusy", "Lease", "LeaseEvent", "LeaseRecord", "LeaseAudit",
           "publish_service", "retract_service", "read_service", "acquire_service", "current_leases",
           "read_lease_log", "audit_lease_log"]

DESCRIPTOR = "service.json"
LOG = "leases.log"


class ServiceError(RuntimeError):
    """A service is not published under the given root, or its directory cannot be used."""


class ServiceBusy(ServiceError):
    """No slot of the service became free within wait_s."""


@dataclass(frozen=True)
class ServiceSpec:
    """A service: `slots` are what a holder gets (GPU ids, licence seats); per_host: each node has its own."""

    name: str
    slots: tuple[str, ...]
    per_host: bool
    lease_timeout_s: float

    def __post_init__(self) -> None:
        check_name("service name", self.name)
        slots = tuple(self.slots) if isinstance(self.slots, (list, tuple)) else self.slots
        if not isinstance(slots, tuple) or not slots:
            raise ValueError(f"service {self.name!r}: slots must be a non-empty tuple of names, got {self.slots!r}")
        for slot in slots:
            check_name(f"slot of service {self.name!r}", slot)
        if len(set(slots)) != len(slots):
            raise ValueError(f"service {self.name!r}: duplicate slots in {slots}")
        object.__setattr__(self, "slots", slots)
        if not isinstance(self.per_host, bool):
            raise ValueError(f"service {self.name!r}: per_host must be True or False, got {self.per_host!r}")
        if not isinstance(self.lease_timeout_s, (int, float)) or not self.lease_timeout_s > 0:
            raise ValueError(f"service {self.name!r}: lease_timeout_s must be > 0, got {self.lease_timeout_s!r}")


def _service_dir(name: str, root: Path) -> Path:
    return Path(root) / check_name("service name", name)


def publish_service(spec: ServiceSpec, root: Path) -> Path:
    """Write spec's descriptor under root/<name>/ and return its path (unchanged if already identical)."""
    sdir = _service_dir(spec.name, root)
    sdir.mkdir(parents=True, exist_ok=True)
    _sweep(sdir, older_than_s=max(10 * spec.lease_timeout_s, 600))
    path = sdir / DESCRIPTOR
    data = json.dumps(asdict(spec), indent=1) + "\n"
    try:
        if path.read_text() == data:
            return path
    except FileNotFoundError:
        pass
    tmp = sdir / f".{DESCRIPTOR}.{new_lease_id()}"
    tmp.write_text(data)
    os.replace(tmp, path)
    return path


def _sweep(sdir: Path, *, older_than_s: float) -> None:
    """Remove what processes killed mid-operation left: temporary lease files and claims, long unused."""
    cutoff = time.time() - older_than_s
    for junk in [*sdir.glob("slots/.tmp-*"), *sdir.glob("slots/*.claim-*"),
                 *sdir.glob("hosts/*/.tmp-*"), *sdir.glob("hosts/*/*.claim-*")]:
        try:
            if junk.lstat().st_mtime < cutoff:
                junk.unlink()
        except FileNotFoundError:
            pass


def retract_service(name: str, root: Path) -> None:
    """Remove the descriptor: no new leases; held ones stay valid until released.  The log is kept."""
    try:
        (_service_dir(name, root) / DESCRIPTOR).unlink()
    except FileNotFoundError:
        raise ServiceError(f"no service {name!r} is published under {root}") from None


def read_service(name: str, root: Path) -> ServiceSpec:
    path = _service_dir(name, root) / DESCRIPTOR
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServiceError(f"no service {name!r} is published under {root} (publish_service first)") from None
    except ValueError as e:
        raise ServiceError(f"service {name!r}: unreadable descriptor {path}: {e}") from None
    try:
        return ServiceSpec(raw["name"], tuple(raw["slots"]), raw["per_host"], raw["lease_timeout_s"])
    except (KeyError, TypeError, ValueError) as e:
        raise ServiceError(f"service {name!r}: invalid descriptor {path}: {e}") from None


def _slot_dir(spec: ServiceSpec, root: Path, host: str) -> Path:
    sdir = _service_dir(spec.name, root)
    return sdir / "hosts" / host if spec.per_host else sdir / "slots"


_HELD: set[Lease] = set()
_HELD_LOCK = threading.Lock()


@dataclass(eq=False)
class Lease:
    """A held slot.  `release()` (or leaving a `with` block) gives it back; `lost` turns True if the lease
    was taken over meanwhile (it went stale: this process was starved past lease_timeout_s)."""

    service: str
    slot: str
    holder: str
    host: str
    lease_id: str
    path: Path
    log: Path
    scope: str
    lease_timeout_s: float
    acquired: float
    lost: bool = False
    released: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _start(self) -> None:
        with _HELD_LOCK:
            _HELD.add(self)
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.service}-{self.slot}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        period_s = self.lease_timeout_s / 3
        while not self._stop.wait(period_s):
            try:
                still_ours = renew_lease(self.path, self.lease_id)
            except OSError:  # a file-server hiccup: try again next period
                continue
            if not still_ours:
                self._mark_lost("taken over while held (seen while renewing)")
                return

    def _event(self, event: str, **extra) -> LeaseEvent:
        return LeaseEvent(time=time.time(), event=event, service=self.service, slot=self.slot, scope=self.scope,
                          holder=self.holder, host=self.host, pid=os.getpid(), lease_id=self.lease_id, **extra)

    def _mark_lost(self, why: str) -> None:
        with self._lock:
            if self.lost or self.released:
                return
            self.lost = True
        append_event(self.log, self._event("lost", reason=why))

    def release(self) -> None:
        """Give the slot back (removing the lease file only if it is still ours).  Idempotent."""
        with self._lock:
            if self.released:
                return
            self.released = True
            was_lost = self.lost
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with _HELD_LOCK:
            _HELD.discard(self)
        if was_lost:
            return
        claim = claim_lease(self.path, self.lease_id, timeout_s=self.lease_timeout_s)
        if claim is None:  # a taker holds the claim on our lease: it is being taken over
            self._lost_on_release("being taken over by another acquirer")
            return
        try:
            current = read_lease(self.path)
            if current is None or current.identity != self.lease_id:
                self._lost_on_release("taken over before release")
                return
            append_event(self.log, self._event("release"))  # logged while still held: log ⊆ holding
            os.unlink(self.path)
        finally:
            os.unlink(claim)

    def _lost_on_release(self, why: str) -> None:
        with self._lock:
            self.lost = True
        append_event(self.log, self._event("lost", reason=why))


@atexit.register
def _release_all_at_exit() -> None:
    with _HELD_LOCK:
        held = list(_HELD)
    for lease in held:
        try:
            lease.release()
        except OSError:
            pass


def _try_slot(spec: ServiceSpec, slot: str, sdir: Path, log: Path, scope: str, holder: str,
              host: str) -> Lease | None:
    path = sdir / f"{slot}.lease"
    lease_id = new_lease_id()
    now = time.time()
    record = LeaseRecord(lease_id=lease_id, service=spec.name, slot=slot, holder=holder, host=host,
                         pid=os.getpid(), acquired=now, pid_namespace=PID_NAMESPACE)
    lease = Lease(service=spec.name, slot=slot, holder=holder, host=host, lease_id=lease_id, path=path, log=log,
                  scope=scope, lease_timeout_s=spec.lease_timeout_s, acquired=now)
    if create_lease(path, record):
        append_event(log, lease._event("acquire"))
        lease._start()
        return lease
    current = read_lease(path)
    if current is None:
        return None  # released meanwhile: the next pass tries again
    reason = stale_reason(current, timeout_s=spec.lease_timeout_s, host=host)
    if reason is None:
        return None
    claim = claim_lease(path, current.identity, timeout_s=spec.lease_timeout_s)
    if claim is None:
        return None  # another acquirer is taking it over
    try:
        again = read_lease(path)
        if again is None or again.identity != current.identity:
            return None  # released or taken over before our claim
        replace_lease(path, record)
        previous = current.record
        append_event(log, lease._event("steal", previous=current.identity, reason=reason,
                                       previous_holder=previous.holder if previous else None))
    finally:
        os.unlink(claim)
    lease._start()
    return lease


def current_leases(name: str, root: Path, *, host: str | None = None) -> dict[str, LeaseRecord | None]:
    """slot -> the record of its lease (None for an unreadable lease file); free slots are absent.
    For a per-host service, the slots of `host` (default this node)."""
    spec = read_service(name, root)
    sdir = _slot_dir(spec, root, check_name("host", host) if host else this_host())
    out: dict[str, LeaseRecord | None] = {}
    for slot in spec.slots:
        current = read_lease(sdir / f"{slot}.lease")
        if current is not None:
            out[slot] = current.record
    return out


def acquire_service(name: str, root: Path, *, holder: str | None = None, wait_s: float | None = None,
                    poll_s: float = 0.2, host: str | None = None) -> Lease:
    """Lease a free slot of service `name`, waiting up to wait_s seconds (None: as long as it takes).

    holder labels the lease in the log (default host:pid:thread).  host is the node this holder runs on
    (default this node's name): it picks a per-host service's slots and decides whether a dead holder
    can be recognised by its pid.  Raises ServiceError if `name` is not published under root,
    ServiceBusy if every slot stayed held for wait_s.
    """
    check_name("service name", name)
    host = this_host() if host is None else check_name("host", host)
    holder = check_holder(holder if holder is not None else f"{host}:{os.getpid()}:{threading.get_ident()}")
    if wait_s is not None and not wait_s >= 0:
        raise ValueError(f"wait_s must be >= 0 or None, got {wait_s!r}")
    if not poll_s > 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
    deadline = None if wait_s is None else time.monotonic() + wait_s
    root = Path(root)
    while True:
        spec = read_service(name, root)
        sdir = _slot_dir(spec, root, host)
        log = _service_dir(name, root) / LOG
        try:
            sdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ServiceError(f"service {name!r}: cannot create lease directory {sdir}: {e}") from None
        scope = host if spec.per_host else ""
        for slot in spec.slots:
            lease = _try_slot(spec, slot, sdir, log, scope, holder, host)
            if lease is not None:
                return lease
        remaining_s = None if deadline is None else deadline - time.monotonic()
        if remaining_s is not None and remaining_s <= 0:
            leases = current_leases(name, root, host=host)
            holders = {slot: (rec.holder if rec else "?") for slot, rec in leases.items()}
            where = f" on {host}" if spec.per_host else ""
            raise ServiceBusy(f"service {name!r}{where}: all slots {list(spec.slots)} stayed held for {wait_s} s "
                              f"(holders {holders})")
        pause_s = poll_s * random.uniform(0.8, 1.2)
        time.sleep(pause_s if remaining_s is None else min(pause_s, remaining_s))


def read_lease_log(name: str, root: Path) -> list[LeaseEvent]:
    """Every acquire / release / steal / lost of service `name`, in the order they were logged."""
    sdir = _service_dir(name, root)
    if not sdir.is_dir():
        raise ServiceError(f"no service {name!r} under {root}")
    return read_events(sdir / LOG)
