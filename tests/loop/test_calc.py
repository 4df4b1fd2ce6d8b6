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
    assert loopcalc.calc_backoff_s(5, 30) == 600


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
