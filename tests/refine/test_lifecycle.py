"""Lifecycle bookkeeping in the database and the tracker's decisions, in-process (no scheduler needed)."""
from __future__ import annotations

import os
import stat

import pytest

from appion.base import jobstates as js
from appion.base.jobstates import JobState as S
from appion.refine import retrieve, store, tracker
from appion.refine.hosts import JobFiles, ProcessingHost
from appion.refine.tracker import Observation, calc_scheduled_target


@pytest.fixture
def job(db, tmp_path):
    from appion.base.db import models as m

    rundir = tmp_path / "runs" / "j1"
    rundir.mkdir(parents=True)
    files = JobFiles(str(rundir), "j1")
    job, lifecycle = store.store_job(name="j1.appionsub.job", files=files, jobtype="generic", host="local",
                                     params={"command": ["true"]}, request={"name": "j1"}, now=1000.0)
    return m, job, lifecycle, files, tmp_path / "runs"


def _ctx(roots, archive=10.0, expire=20.0):
    return tracker.Context((ProcessingHost("local", "slurm"),),
                           retrieve.JobsSettings(rundir_roots=(str(roots),), archive_after_s=archive,
                                                 expire_after_s=expire))


def test_store_job_and_transitions_keep_classic_status_in_step(job):
    m, row, lifecycle, files, _ = job
    assert m.ApAppionJobData.objects.get(id=row.id).status == "Q"
    stale = retrieve.retrieve_lifecycle(row.id)  # what a second tracker read at the same moment
    store.store_transitions(lifecycle, js.calc_path(S.INCOMING, S.RUNNING), now=1001.0, cluster_job_id=77)
    fresh = retrieve.retrieve_lifecycle(row.id)  # a restarted tracker reads this
    assert fresh.state == "RUNNING" and fresh.updated_at == 1001.0
    saved = m.ApAppionJobData.objects.get(id=row.id)
    assert (saved.status, saved.clusterjobid) == ("R", 77)
    history = [(t.from_state, t.to_state) for t in retrieve.retrieve_transitions(fresh.id)]
    assert history == [("", "INCOMING"), ("INCOMING", "PREPROCESSING"), ("PREPROCESSING", "RUNNING")]
    with pytest.raises(store.StaleLifecycleError, match="no longer INCOMING"):  # never applied twice
        store.store_transitions(stale, js.calc_path(S.INCOMING, S.RUNNING), now=1001.5)
    assert len(retrieve.retrieve_transitions(fresh.id)) == 3
    store.store_transitions(fresh, [js.calc_transition(S.RUNNING, S.FAILED, "exit 2")], now=1002.0)
    assert m.ApAppionJobData.objects.get(id=row.id).status == "E"
    assert retrieve.retrieve_lifecycle(row.id).finished_at == 1002.0
    log = open(files.log).read()
    assert "PREPROCESSING -> RUNNING" in log and "RUNNING -> FAILED: exit 2" in log


def test_web_created_job_row_is_reused(db, tmp_path):
    from appion.base.db import models as m

    pre = m.ApAppionJobData.objects.create(name="x", status="Q", jobtype="generic")
    files = JobFiles(str(tmp_path), "r")
    row, _ = store.store_job(name="r.appionsub.job", files=files, jobtype="generic", host="h",
                             params={"command": ["true"]}, request={}, job_id=pre.id)
    assert row.id == pre.id and m.ApAppionJobData.objects.count() == 1
    with pytest.raises(ValueError, match="--jobid 999"):
        store.store_job(name="r", files=files, jobtype="generic", host="h", params={}, request={}, job_id=999)


def test_scheduled_target_decisions():
    run = S.RUNNING
    assert calc_scheduled_target(S.INCOMING, Observation("Q", None, None)) == (S.INCOMING, "")
    assert calc_scheduled_target(S.INCOMING, Observation("R", None, None))[0] is S.PREPROCESSING
    assert calc_scheduled_target(S.INCOMING, Observation("R", "RUNNING", None))[0] is S.RUNNING
    assert calc_scheduled_target(run, Observation("Q", None, None)) == (run, "")  # a later cycle, queued
    assert calc_scheduled_target(run, Observation("R", "PREPROCESSING", None)) == (run, "")
    assert calc_scheduled_target(run, Observation("R", "RUNNING", 0))[0] is S.POSTPROCESSING  # still completing
    assert calc_scheduled_target(run, Observation(None, "RUNNING", 0))[0] is S.POSTPROCESSING
    target, reason = calc_scheduled_target(run, Observation(None, "RUNNING", 143, "CANCELLED"))
    assert target is S.FAILED and "143" in reason and "cancelled" in reason
    target, reason = calc_scheduled_target(S.INCOMING, Observation(None, None, None, "CANCELLED"))
    assert target is S.FAILED and "CANCELLED" in reason
    target, reason = calc_scheduled_target(run, Observation(None, "RUNNING", None))
    assert target is S.FAILED and "without writing an exit status" in reason
    assert calc_scheduled_target(run, Observation("E", None, None, ""))[0] is S.FAILED  # LSF EXIT
    assert calc_scheduled_target(run, Observation(None, None, 0, "TIMEOUT"))[0] is S.FAILED


def test_tracker_work_states_and_ageing_continue_from_the_database(job):
    m, row, lifecycle, files, roots = job
    (roots / "j1" / "result.txt").write_text("answer\n")
    store.store_transitions(lifecycle, js.calc_path(S.INCOMING, S.POSTPROCESSING, "exit 0"), now=1001.0)
    # each step uses a fresh context and re-reads the row: as a restarted tracker would
    assert tracker.step_lifecycle(_ctx(roots), retrieve.retrieve_lifecycle(row.id), 1002.0)
    assert retrieve.retrieve_lifecycle(row.id).state == "FINALIZING"
    assert tracker.step_lifecycle(_ctx(roots), retrieve.retrieve_lifecycle(row.id), 1003.0)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert (lc.state, lc.finished_at) == ("COMPLETED", 1003.0)
    assert not tracker.step_lifecycle(_ctx(roots), lc, 1005.0)  # too young to archive
    assert tracker.step_lifecycle(_ctx(roots), lc, 1013.0)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert lc.state == "ARCHIVED"
    manifest = roots / "j1" / "j1.manifest.json"
    assert "result.txt" in manifest.read_text()
    assert not os.stat(roots / "j1" / "result.txt").st_mode & stat.S_IWUSR  # archived files are read-only
    assert tracker.step_lifecycle(_ctx(roots), lc, 1023.0)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert lc.state == "EXPIRED" and not (roots / "j1").exists()
    assert m.ApAppionJobData.objects.get(id=row.id).status == "D"
    assert retrieve.retrieve_active_lifecycles() == []


def test_refinement_without_outputs_fails_in_postprocessing(job):
    m, row, lifecycle, files, roots = job
    lifecycle.jobtype = "relionrecon"
    lifecycle.params = ('{"params": {"rundir": "%s", "stack": "s.star", "model": "m.mrc", "apix": 1, '
                        '"boxsize": 32, "iterations": 2}, "request": {"name": "j1"}}' % files.rundir)
    lifecycle.save()
    store.store_transitions(lifecycle, js.calc_path(S.INCOMING, S.POSTPROCESSING, "exit 0"), now=1001.0)
    assert tracker.step_lifecycle(_ctx(roots), retrieve.retrieve_lifecycle(row.id), 1002.0)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert lc.state == "FAILED" and "no iteration output" in lc.reason
    assert m.ApAppionJobData.objects.get(id=row.id).status == "E"


def test_expiry_refuses_directories_outside_the_roots(job, tmp_path):
    _, _, _, files, roots = job
    with pytest.raises(ValueError, match="outside"):
        store.remove_run_directory(files, (str(tmp_path / "elsewhere"),))
    assert os.path.isdir(files.rundir)
    link = roots / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(ValueError, match="symbolic link"):
        store.remove_run_directory(JobFiles(str(link), "link"), (str(roots),))
    assert tmp_path.exists()


def test_interrupted_submission_fails_after_a_grace_period(job):
    m, row, lifecycle, files, roots = job  # INCOMING at t=1000 with no cluster id (the submitter died)
    assert not tracker.step_lifecycle(_ctx(roots), lifecycle, 1000.0 + 10)
    assert tracker.step_lifecycle(_ctx(roots), lifecycle, 1000.0 + tracker.SUBMIT_GRACE_S + 1)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert lc.state == "FAILED" and "interrupted" in lc.reason


def test_jobs_list_and_show(job, capsys):
    from argparse import Namespace

    from appion.refine import commands

    m, row, lifecycle, files, roots = job
    store.store_transitions(lifecycle, js.calc_path(S.INCOMING, S.RUNNING), now=1001.0, cluster_job_id=4242)
    assert commands.cmd_jobs_list(Namespace(all=False)) == 0
    out = capsys.readouterr().out
    assert "4242" in out and "RUNNING" in out and "generic" in out
    assert commands.cmd_jobs_show(Namespace(job=row.id)) == 0
    out = capsys.readouterr().out
    assert "PREPROCESSING -> RUNNING" in out and "INCOMING -> PREPROCESSING" in out


def test_a_failed_job_that_expires_stays_E(job):
    """Issue 13: a failed job whose directory ages out must not read as done."""
    m, row, lifecycle, files, roots = job
    store.store_transitions(lifecycle, [js.calc_transition(S.INCOMING, S.FAILED, "job exited with status 3")],
                            now=1001.0)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert not tracker.step_lifecycle(_ctx(roots), lc, 1010.0)  # expire_after_s = 20
    assert tracker.step_lifecycle(_ctx(roots), lc, 1022.0)
    lc = retrieve.retrieve_lifecycle(row.id)
    assert lc.state == "EXPIRED" and not (roots / "j1").exists()
    assert "expired after failing: job exited with status 3" in lc.reason
    assert m.ApAppionJobData.objects.get(id=row.id).status == "E"
    history = [(t.from_state, t.to_state) for t in retrieve.retrieve_transitions(lc.id)]
    assert history[-2:] == [("INCOMING", "FAILED"), ("FAILED", "EXPIRED")]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_job_file_honours_the_umask(tmp_path, umask):
    """Issue 13: the job file is executable with the permissions the user's umask allows (not always 0755)."""
    files = JobFiles(str(tmp_path), "u1")
    old = os.umask(umask)
    try:
        store.write_job_file(files, "#!/bin/bash\ntrue\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(files.job_file).st_mode) == 0o777 & ~umask


def test_job_end_is_notified_once(job, monkeypatch):
    """COMPLETED and FAILED reach appion.notify (its user from ApAppionJobData); other states and a stale second
    tracker do not."""
    import appion.notify.monitor as monitor

    m, row, lifecycle, files, _ = job
    m.ApAppionJobData.objects.filter(id=row.id).update(user="alice")
    calls = []
    monkeypatch.setattr(monitor, "notify_job_state",
                        lambda job, state, user, reason="": calls.append((job.id, state, user, reason)))
    stale = retrieve.retrieve_lifecycle(row.id)
    store.store_transitions(lifecycle, js.calc_path(S.INCOMING, S.RUNNING), now=1001.0)
    assert calls == []
    store.store_transitions(lifecycle, [js.calc_transition(S.RUNNING, S.FAILED, "exit 2")], now=1002.0)
    assert calls == [(lifecycle.id, S.FAILED, "alice", "exit 2")]
    with pytest.raises(store.StaleLifecycleError):
        store.store_transitions(stale, js.calc_path(S.INCOMING, S.RUNNING), now=1003.0)
    assert len(calls) == 1
