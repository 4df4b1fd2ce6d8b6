"""Pure pieces of the loop: keys, hashes, back-off, tilt filter, classic trajectory/stat values, cluster options."""
from __future__ import annotations

import math

import pytest

from appion.loop import calc as loopcalc
from appion.loop import cluster
from appion.motioncorrection.calc import rows as motionrows
from appion.motioncorrection.records import MotionSettings


def test_task_key_is_deterministic_and_distinguishes_work():
    a = loopcalc.calc_task_key("motion", 12, "abc", 1)
    assert a == loopcalc.calc_task_key("motion", 12, "abc", 1)
    assert len({a, loopcalc.calc_task_key("ctf", 12, "abc", 1), loopcalc.calc_task_key("motion", 13, "abc", 1),
                loopcalc.calc_task_key("motion", 12, "abd", 1), loopcalc.calc_task_key("motion", 12, "abc", 2)}) == 5


def test_params_hash_ignores_key_order_and_threads():
    assert loopcalc.calc_params_hash({"a": 1, "b": 2}) == loopcalc.calc_params_hash({"b": 2, "a": 1})
    m1 = MotionSettings(threads=1).hashed()
    m2 = MotionSettings(threads=8, executable="/opt/x").hashed()
    assert loopcalc.calc_params_hash(m1) == loopcalc.calc_params_hash(m2)
    assert loopcalc.calc_params_hash(m1) != loopcalc.calc_params_hash(MotionSettings(bin=2).hashed())


def test_backoff_doubles_and_is_capped():
    assert [loopcalc.calc_backoff_s(5, n) for n in (1, 2, 3)] == [5, 10, 20]
    assert loopcalc.calc_backoff_s(5, 30) == loopcalc.BACKOFF_CAP_S == 300
    assert loopcalc.calc_backoff_s(5, 10_000) == 300  # no overflow after many attempts
    # the defaults (--retries 6, --backoff 10) wait out a full disk for minutes, not seconds
    assert sum(loopcalc.calc_backoff_s(10, n) for n in range(1, 7)) >= 600


def test_errors_are_classified_transient_or_deterministic():
    import errno
    import subprocess

    from distributed.scheduler import KilledWorker

    from appion.base.io.movies import GainMismatchError, MovieError
    from appion.loop.db import MissingPhysics
    from appion.motioncorrection.task import MovieStillBeingWritten

    transient = [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "I/O error"),
                 MovieStillBeingWritten("x: still being written"), KilledWorker("task", "worker", 0),
                 subprocess.TimeoutExpired(["ctffind4"], 10), RuntimeError("MotionCor2 crashed"), MemoryError(),
                 None]
    deterministic = [MovieError("x.tif: truncated"), GainMismatchError("gain 256² for 512² frames"),
                     ValueError("image contains NaN"), MissingPhysics("pixel size missing"), TypeError("bug")]
    assert [loopcalc.calc_error_kind(e) for e in transient] == [loopcalc.TRANSIENT] * len(transient)
    assert [loopcalc.calc_error_kind(e) for e in deterministic] == [loopcalc.DETERMINISTIC] * len(deterministic)
    from django.db.utils import IntegrityError, OperationalError

    assert loopcalc.calc_error_kind(OperationalError(2002, "gone")) == loopcalc.TRANSIENT
    assert loopcalc.calc_error_kind(IntegrityError("dup")) == loopcalc.TRANSIENT


def test_reason_names_the_file():
    assert loopcalc.calc_reason_naming_file("ValueError: NaN", "s_01en", "/f/s_01en.tif") == "/f/s_01en.tif: ValueError: NaN"
    assert loopcalc.calc_reason_naming_file("MovieError: /f/s_01en.tif: cut", "s_01en", "/f/s_01en.tif") == \
        "MovieError: /f/s_01en.tif: cut"


def test_lock_holder_liveness():
    alive = loopcalc.calc_holder_alive
    assert alive("h1", 1000.0, 1010.0, "h1", True) == (True, "alive")
    assert alive("h1", 1000.0, 1010.0, "h1", False) == (False, "its process is gone")  # at once, not after 60 s
    assert alive("h2", 1000.0, 1010.0, "h1", None)[0] is True  # another host: the heartbeat decides
    assert alive("h2", 1000.0, 1000.0 + loopcalc.STALE_AFTER_S + 1, "h1", None)[0] is False
    assert alive("h1", None, 1010.0, "h1", True)[0] is False
    assert loopcalc.calc_holder("h1", 42, 1000.0, 1005.0) == "h1:42 (heartbeat 5 s ago)"


def test_pid_liveness_sees_this_process_and_a_dead_one():
    import os
    import subprocess
    import time

    from appion.loop.runlock import is_pid_alive

    assert is_pid_alive(os.getpid(), time.time())
    done = subprocess.run(["true"])
    child = subprocess.Popen(["true"])
    child.wait()
    assert done.returncode == 0 and not is_pid_alive(child.pid)
    assert not is_pid_alive(os.getpid(), time.time() - 10 ** 6)  # a process younger than the holder: pid reused


def test_leftover_temporaries_are_removed_only_when_old_hidden_and_here(tmp_path):
    import os

    from appion.loop.runlock import clean_part_files

    run, other = tmp_path / "run", tmp_path / "other"
    (run / "sub").mkdir(parents=True)
    other.mkdir()
    old = [run / ".a.mrc.x1.part"]
    kept = [run / ".b.mrc.x2.part", run / "c.part", run / ".d.mrc", run / "sub" / ".e.part", other / ".f.part"]
    for path in old + kept:
        path.write_bytes(b"x")
    for path in old + kept[1:]:
        os.utime(path, (1000.0, 1000.0))
    (run / ".link.part").symlink_to(other / ".f.part")
    os.utime(run / ".link.part", (1000.0, 1000.0), follow_symlinks=False)
    removed = clean_part_files([run, tmp_path / "missing"], margin_s=60.0)
    assert removed == old
    assert all(p.exists() for p in kept) and (run / ".link.part").is_symlink()


def test_ctf_box_shrinks_to_fit():
    from appion.ctfestimation.task import calc_box_that_fits

    assert calc_box_that_fits(512, (4096, 4096)) == 512
    assert calc_box_that_fits(1024, (512, 512)) == 512
    assert calc_box_that_fits(1024, (700, 900)) == 512
    assert calc_box_that_fits(512, (100, 100)) == 64
    assert calc_box_that_fits(512, (50, 80)) is None


def test_missing_submit_command_is_named(tmp_path):
    from appion.loop.calc import LoopError

    with pytest.raises(LoopError, match="'qsub' is not on PATH"):
        cluster.check_submit_command("pbs", "qsub", path=str(tmp_path))
    (tmp_path / "qsub").write_text("#!/bin/sh\n")
    (tmp_path / "qsub").chmod(0o755)
    assert cluster.check_submit_command("pbs", "qsub", path=str(tmp_path)) == str(tmp_path / "qsub")
    assert cluster.check_cluster_commands("local") is None


def test_database_retry_gives_up_on_stop_and_when_never_answered():
    import time

    from django.db.utils import OperationalError

    from appion.loop.db import DatabaseRetry

    calls = []

    def down():
        calls.append(1)
        raise OperationalError(2003, "Can't connect")

    start = time.monotonic()
    with pytest.raises(OperationalError):
        DatabaseRetry(start_wait_s=1.0)(down)
    assert 1.0 <= time.monotonic() - start < 5.0 and len(calls) >= 2
    stop = {"now": False}
    retry = DatabaseRetry(should_give_up=lambda: stop["now"])
    assert retry(lambda: 7) == 7 and retry.answered  # answered once: outages after that are waited out ...
    start = time.monotonic()
    failures = iter([1, 2, 3])

    def flaky():
        if next(failures, None) is not None:
            raise OperationalError(2013, "lost")
        return "back"

    assert retry(flaky) == "back" and retry.outages == 1
    stop["now"] = True  # ... until a stop request's grace has run out
    with pytest.raises(OperationalError):
        retry(down)


@pytest.mark.parametrize("tilt,angle,skip", [
    ("notilt", 0.5, False), ("notilt", 10, True), ("hightilt", 40, False), ("hightilt", 10, True),
    ("lowtilt", 10, False), ("lowtilt", -35, True), ("minustilt", -30, False), ("minustilt", 0, True),
    ("plustilt", 30, False), ("plustilt", 0, True), ("all", 60, False)])
def test_classic_tilt_filter(tilt, angle, skip):
    assert loopcalc.calc_tilt_skip(angle, tilt) is skip


def test_aligned_filenames_follow_classic_naming():
    assert motionrows.calc_aligned_filenames("s_00001en", "a", True) == ("s_00001en-a", "s_00001en-a-DW")
    assert motionrows.calc_aligned_filenames("s_00001en", "b", False) == ("s_00001en-b", None)


def test_log_positions_round_trip_to_trajectory_and_stats():
    text = ("Sum Frame #000 - #004 (Reference Frame #002):\n"
            "......Add Frame #000 with xy shift: 2.00000 -1.00000\n"
            "......Add Frame #001 with xy shift: 1.00000 -0.50000\n"
            "......Add Frame #002 with xy shift: 0.00000 0.00000\n"
            "......Add Frame #003 with xy shift: -3.00000 4.00000\n")
    pos = motionrows.parse_st_log_positions(text)
    assert pos == ((2.0, -1.0), (1.0, -0.5), (0.0, 0.0), (-3.0, 4.0))
    traj = motionrows.calc_trajectory_fields(pos, limit=3)
    assert traj["pos_x"] == [2.0, 1.0, 0.0] and traj["pos_y"] == [-1.0, -0.5, 0.0]
    assert (traj["last_x"], traj["last_y"], traj["number_of_positions"], traj["reference_index"]) == (-3.0, 4.0, 4, 2)
    stats = motionrows.calc_align_stats_fields(pos, 1.5)
    steps = [math.hypot(1, 0.5), math.hypot(1, 0.5), 5.0]
    assert stats["top_shift1_value"] == pytest.approx(5.0) and stats["top_shift1_index"] == 2
    assert stats["top_shift2_value"] == pytest.approx(steps[0])
    assert stats["median_shift_value"] == pytest.approx(sorted(steps)[1])
    assert stats["apix"] == 1.5


def test_percentile_nearest_rank():
    assert loopcalc.calc_percentile([], 50) is None
    assert loopcalc.calc_percentile([3, 1, 2, 4], 50) == 2
    assert loopcalc.calc_percentile(list(range(1, 101)), 95) == 95


def test_walltime_and_lifetime():
    assert cluster.calc_walltime_seconds("01:00:00") == 3600
    assert cluster.calc_walltime_seconds("30") == 1800
    assert cluster.calc_walltime_seconds("10:30") == 630
    assert cluster.calc_walltime_seconds("1-02:00:00") == 93600
    with pytest.raises(ValueError):
        cluster.calc_walltime_seconds("an hour")
    lifetime = int(cluster.calc_worker_lifetime("01:00:00", "60s").rstrip("s"))
    assert 1800 <= lifetime < 3600


def test_jobqueue_kwargs_flags_win_and_protect_the_work():
    kw = cluster.calc_jobqueue_kwargs(cluster.ClusterSettings(kind="slurm", queue="debug", cores=2, memory="3GB",
                                                              walltime="00:20:00", gpus=1))
    assert kw["queue"] == "debug" and kw["cores"] == 2 and kw["memory"] == "3GB" and kw["processes"] == 1
    args = kw["worker_extra_args"]
    assert args[args.index("--lifetime") + 1] == cluster.calc_worker_lifetime("00:20:00", "60s")
    assert "--lifetime-stagger" in args and args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == "1"
    assert any("NUMBA_NUM_THREADS" in line for line in kw["job_script_prologue"])


def test_calc_worker_count():
    assert cluster.calc_worker_count(2, 1) == 2
    assert cluster.calc_worker_count(8, 4) == 2
    assert cluster.calc_worker_count(2, 4) == 1


def test_heartbeat_thread_beats_survives_errors_and_closes():
    import time

    from appion.loop.runlock import Heartbeat

    beats, closed = [], []

    def beat():
        beats.append(time.monotonic())
        if len(beats) == 2:
            raise OSError("database away")  # an outage does not end the heartbeat

    hb = Heartbeat(beat, 0.05, close=lambda: closed.append(True)).start()
    deadline = time.monotonic() + 10
    while len(beats) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    hb.stop()
    assert len(beats) >= 4 and closed == [True] and not hb.thread.is_alive()
