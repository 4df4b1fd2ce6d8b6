"""Long-lived services on a threaded Dask cluster: published once, leased exclusively, waited for.

Exclusivity is checked from the service's own event log (wait / acquire / release in the order
the actor saw them) and from the values its calls return, never from timings.
"""
from __future__ import annotations

import itertools
import time

import pytest
from distributed import Client

from appion.workflow.services import (
    ServiceBusy,
    ServiceError,
    acquire_service,
    publish_service,
    read_service_events,
    retract_service,
)
from appion.workflow.core import COMPLETED, Workflow, register_jobtype

_BUILDS = itertools.count(1)


class WarmModel:
    """Stands in for an expensive model: built once, counts the calls it served."""

    def __init__(self, scale: int) -> None:
        self.build_number = next(_BUILDS)
        self.scale = scale
        self.calls = 0

    def predict(self, x: int) -> tuple[int, int, int]:
        self.calls += 1
        return self.build_number, self.calls, x * self.scale

    def _secret(self) -> None:
        raise AssertionError("private methods must not be reachable")


@pytest.fixture
def client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
        yield c


def _wait_for_event(name: str, event: tuple[str, str], deadline_s: float = 30.0) -> None:
    """Block until the service has seen `event` (a guard, not a timing assertion)."""
    end = time.monotonic() + deadline_s
    while event not in read_service_events(name):
        if time.monotonic() > end:
            raise AssertionError(f"service never saw {event}")
        time.sleep(0.01)


def use_model(params: dict, inputs: list[str]) -> list:
    """A workflow job: lease the model, make three calls; the first holder waits until the other queues."""
    me, other = params["me"], params["other"]
    with acquire_service("model", holder=me) as svc:
        events = read_service_events("model")
        if ("acquire", other) not in events:  # we hold it first: let the other job start waiting
            _wait_for_event("model", ("wait", other))
        return [list(svc.call("predict", x)) for x in (1, 2, 3)]


def test_two_jobs_share_a_warm_service_one_at_a_time(db, client):
    publish_service("model", WarmModel, args=(10,), client=client)
    register_jobtype("test-use-model", use_model)
    wf = Workflow("service-users")
    j1 = wf.submit("test-use-model", {"me": "job1", "other": "job2"}, name="job1")
    j2 = wf.submit("test-use-model", {"me": "job2", "other": "job1"}, name="job2")
    summary = wf.run(client)
    assert summary.states == {"job1": COMPLETED, "job2": COMPLETED}

    events = read_service_events("model", client)
    first = next(holder for event, holder in events if event == "acquire")
    second = "job2" if first == "job1" else "job1"
    # exclusive use: acquire/release strictly alternate, each release by the current holder
    assert [e for e in events if e[0] != "wait"] == [("acquire", first), ("release", first),
                                                     ("acquire", second), ("release", second)]
    # the second job asked while the first held it, and got it only after the release
    assert events.index(("wait", second)) < events.index(("release", first))
    results = {"job1": j1.result, "job2": j2.result}
    builds = {r[0] for res in results.values() for r in res}
    assert len(builds) == 1  # built once, kept warm for both jobs
    assert [r[1] for r in results[first]] == [1, 2, 3]
    assert [r[1] for r in results[second]] == [4, 5, 6]
    assert [r[2] for r in results[first]] == [10, 20, 30]


def test_busy_timeout_non_holder_and_release_on_error(client):
    publish_service("solo", WarmModel, args=(1,), client=client)
    with acquire_service("solo", client=client, holder="h1") as lease:
        assert lease.call("predict", 5)[2] == 5
        with pytest.raises(ServiceBusy, match="stayed busy"):
            with acquire_service("solo", client=client, holder="h2", timeout=0.2):
                pass
        with pytest.raises(ServiceError, match="holds no lease"):
            lease.actor.call("intruder", "predict", (1,), {}).result()
        with pytest.raises(ServiceError, match="not public"):
            lease.call("_secret")
    with pytest.raises(RuntimeError, match="inside"):
        with acquire_service("solo", client=client, holder="h3"):
            raise RuntimeError("inside the lease")
    with acquire_service("solo", client=client, holder="h4", timeout=5):
        pass
    assert read_service_events("solo", client) == [
        ("wait", "h1"), ("acquire", "h1"), ("wait", "h2"), ("release", "h1"),
        ("wait", "h3"), ("acquire", "h3"), ("release", "h3"), ("wait", "h4"), ("acquire", "h4"), ("release", "h4")]


def test_publishing_errors(client):
    with pytest.raises(ServiceError, match="no service 'absent'"):
        with acquire_service("absent", client=client):
            pass
    publish_service("dup", WarmModel, args=(1,), client=client)
    with pytest.raises(ServiceError, match="already published"):
        publish_service("dup", WarmModel, args=(1,), client=client)
    publish_service("dup", WarmModel, args=(2,), client=client, replace=True)
    with acquire_service("dup", client=client) as svc:
        assert svc.call("predict", 1)[2] == 2
    retract_service("dup", client=client)
    with pytest.raises(ServiceError, match="no service 'dup'"):
        read_service_events("dup", client)
    with pytest.raises(TypeError):
        publish_service("broken", WarmModel, args=("too", "many"), client=client)
    with pytest.raises(ServiceError, match="capacity"):
        publish_service("zero", WarmModel, args=(1,), capacity=0, client=client)


def test_capacity_two_admits_two_holders(client):
    publish_service("pool", WarmModel, args=(1,), capacity=2, client=client)
    with acquire_service("pool", client=client, holder="p1"), \
            acquire_service("pool", client=client, holder="p2"):
        with pytest.raises(ServiceBusy):
            with acquire_service("pool", client=client, holder="p3", timeout=0.2):
                pass
    events = read_service_events("pool", client)
    assert ("acquire", "p1") in events and ("acquire", "p2") in events and ("acquire", "p3") not in events
