"""Long-lived services on a Dask cluster: an instance kept warm (a model, a GPU program) that jobs lease.

Why: loading a model or starting a GPU program costs far more than one call, and two jobs must
not drive it at once.  A service is a Dask actor (so its state lives on one worker, placed with
`workers=` or `resources=`, e.g. {"GPU": 1}) published under a name; a job acquires a lease,
makes several calls, and releases it.  Leases are a cluster-wide distributed.Semaphore of the
service's capacity (a holder whose client dies loses its lease after the scheduler's lease
timeout), and the actor itself also refuses calls from non-holders and records every
acquire/release, so exclusive use is checked, not assumed.

    publish_service("ctf-model", load_model, args=(path,), client=client)
    with acquire_service("ctf-model") as svc:      # inside a job: waits while another job holds it
        a = svc.call("predict", x1)
        b = svc.call("predict", x2)
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ServiceError", "ServiceBusy", "ServiceLease", "publish_service", "acquire_service",
           "read_service_events", "retract_service"]


class ServiceError(RuntimeError):
    """A service is missing, already published, or used without holding a lease."""


class ServiceBusy(ServiceError):
    """No lease became free within the timeout."""


def _dataset_name(name: str) -> str:
    return f"appion-service:{name}"


def _lease_name(name: str) -> str:
    return f"appion-service-lease:{name}"


class ServiceHost:
    """The actor: builds the instance once, tracks holders, forwards calls from holders only."""

    def __init__(self, name: str, factory: Callable, args: Sequence, kwargs: Mapping, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.instance = factory(*args, **kwargs)
        self.holders: set[str] = set()
        self.events: list[tuple[str, str]] = []

    def read_capacity(self) -> int:
        return self.capacity

    def note(self, event: str, holder: str) -> None:
        self.events.append((event, holder))

    def enter(self, holder: str) -> None:
        if holder in self.holders:
            raise ServiceError(f"service {self.name!r}: {holder} already holds it")
        if len(self.holders) >= self.capacity:
            raise ServiceBusy(f"service {self.name!r} is held by {sorted(self.holders)} (capacity {self.capacity})")
        self.holders.add(holder)
        self.events.append(("acquire", holder))

    def leave(self, holder: str) -> None:
        if holder not in self.holders:
            raise ServiceError(f"service {self.name!r}: {holder} does not hold it")
        self.holders.remove(holder)
        self.events.append(("release", holder))

    def call(self, holder: str, method: str, args: Sequence, kwargs: Mapping):
        if holder not in self.holders:
            raise ServiceError(f"service {self.name!r}: call to {method!r} from {holder}, which holds no lease")
        if not isinstance(method, str) or method.startswith("_"):
            raise ServiceError(f"service {self.name!r}: method {method!r} is not public")
        return getattr(self.instance, method)(*args, **kwargs)

    def read_events(self) -> list[tuple[str, str]]:
        return list(self.events)


@dataclass(frozen=True)
class ServiceLease:
    """A held service: `call(method, *args, **kwargs)` runs `instance.method(...)` on the service's worker."""

    name: str
    holder: str
    actor: object

    def call(self, method: str, *args, **kwargs):
        return self.actor.call(self.holder, method, args, kwargs).result()


def _client(client):
    if client is not None:
        return client
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        raise ServiceError("no Dask client: pass client= or call from a task or a process with a Client") from None


def _find_actor(name: str, client):
    try:
        future = client.get_dataset(_dataset_name(name))
    except KeyError:
        raise ServiceError(f"no service {name!r} is published on this cluster") from None
    return future.result()


def publish_service(name: str, factory: Callable, args: Sequence = (), kwargs: Mapping | None = None, *,
                    capacity: int = 1, client=None, workers=None, resources: Mapping[str, float] | None = None,
                    replace: bool = False) -> None:
    """Build `factory(*args, **kwargs)` once inside an actor on the cluster and publish it as `name`.

    workers / resources place the service (e.g. resources={"GPU": 1} on a GPU worker); capacity is
    how many holders may use it at once (1 = exclusive).  Errors in the factory are raised here.
    """
    if capacity < 1:
        raise ServiceError(f"service {name!r}: capacity must be at least 1, got {capacity}")
    client = _client(client)
    if not replace and _dataset_name(name) in client.list_datasets():
        raise ServiceError(f"service {name!r} is already published (use replace=True or retract it)")
    future = client.submit(ServiceHost, name, factory, tuple(args), dict(kwargs or {}), capacity, actor=True,
                           key=f"appion-service-{name}-{uuid.uuid4().hex[:8]}", workers=workers,
                           resources=dict(resources) if resources else None)
    future.result()  # surface factory errors now, not at the first call
    try:
        client.publish_dataset(**{_dataset_name(name): future}, override=replace)
    except KeyError:
        raise ServiceError(f"service {name!r} was published by someone else meanwhile") from None


def retract_service(name: str, client=None) -> None:
    """Unpublish `name`; the actor is freed once no job holds a reference."""
    try:
        _client(client).unpublish_dataset(_dataset_name(name))
    except KeyError:
        raise ServiceError(f"no service {name!r} is published on this cluster") from None


def read_service_events(name: str, client=None) -> list[tuple[str, str]]:
    """The service's log of (event, holder): "wait", "acquire", "release", in the order they happened."""
    actor = _find_actor(name, _client(client))
    return [tuple(e) for e in actor.read_events().result()]


def _default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


@contextmanager
def acquire_service(name: str, *, client=None, holder: str | None = None,
                    timeout: float | None = None) -> Iterator[ServiceLease]:
    """Hold service `name` for the duration of the block, waiting while it is busy.

    timeout: seconds to wait for a lease (None = as long as it takes), then ServiceBusy.  Inside a
    Dask task the waiting task leaves the worker's thread pool, so waiters cannot starve the holder.
    """
    from distributed import Semaphore

    client = _client(client)
    actor = _find_actor(name, client)
    capacity = actor.read_capacity().result()
    holder = holder or _default_holder()
    lease = Semaphore(max_leases=capacity, name=_lease_name(name))
    actor.note("wait", holder).result()
    with _seceded():
        got = lease.acquire(timeout=timeout)
    if not got:
        raise ServiceBusy(f"service {name!r} stayed busy for {timeout} s")
    try:
        actor.enter(holder).result()
        try:
            yield ServiceLease(name, holder, actor)
        finally:
            actor.leave(holder).result()
    finally:
        lease.release()


@contextmanager
def _seceded():
    """Inside a Dask task: give the thread slot back while blocking, take one again afterwards."""
    from distributed import rejoin, secede
    from distributed.worker import thread_state

    in_task = getattr(thread_state, "key", None) is not None and not getattr(thread_state, "actor", False)
    if not in_task:
        yield
        return
    secede()
    try:
        yield
    finally:
        rejoin()
