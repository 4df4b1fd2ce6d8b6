"""Job-type registry: parameters → job-file commands, and the decision to run another cycle (pure)."""
from __future__ import annotations

import pytest

from appion.refine.calc import external as X

BASE = {"rundir": "/data/r1", "stack": "/data/p/particles.star", "model": "/data/p/model.mrc", "apix": "2.5",
        "boxsize": "64", "iterations": "3"}


def test_registered_types():
    assert {"generic", "emanrecon", "frealignrecon", "relionrecon", "xmipprecon", "xmippml3d"} <= set(X.JOB_TYPES)


def test_generic_runs_the_command_as_given():
    cmd = ["prog.py", "--x=1", "a;b"]
    assert X.build_job_commands("generic", {"command": cmd}) == [cmd]
    with pytest.raises(X.JobParamsError, match="shell string"):
        X.build_job_commands("generic", {"command": "prog.py --x=1"})
    with pytest.raises(X.JobParamsError):
        X.build_job_commands("generic", {"command": []})


def test_relion_commands_and_continuation():
    [argv] = X.build_job_commands("relionrecon", BASE)
    assert argv[0] == "relion_refine"
    assert argv[argv.index("--i") + 1] == BASE["stack"] and argv[argv.index("--ref") + 1] == BASE["model"]
    assert argv[argv.index("--o") + 1] == "/data/r1/run" and argv[argv.index("--iter") + 1] == "3"
    assert argv[argv.index("--angpix") + 1] == "2.5"
    [mpi] = X.build_job_commands("relionrecon", {**BASE, "nproc": 8})
    assert mpi[:4] == ["mpirun", "-np", "8", "relion_refine_mpi"]
    [cont] = X.build_job_commands("relionrecon", {**BASE, "start_iteration": 3})
    assert cont[cont.index("--continue") + 1] == "/data/r1/run_it002_optimiser.star" and "--i" not in cont


def test_next_cycle_counts_iterations():
    names = ["run_it001_class001.mrc", "run_it002_class001.mrc", "run_it002_model.star"]
    nxt = X.calc_next_cycle("relionrecon", BASE, names)
    assert nxt["start_iteration"] == 3 and nxt["iterations"] == 3
    assert X.calc_next_cycle("relionrecon", BASE, names + ["run_it003_class001.mrc"]) is None
    with pytest.raises(X.CycleError, match="no iteration output"):
        X.calc_next_cycle("relionrecon", BASE, ["other.txt"])
    assert X.calc_next_cycle("generic", {"command": ["x"]}, []) is None


def test_other_refinement_types():
    eman = X.build_job_commands("emanrecon", BASE)
    assert len(eman) == 3 and eman[0][:2] == ["refine", "1"] and "sym=c1" in eman[0]
    assert X.calc_next_cycle("emanrecon", BASE, ["threed.0a.mrc", "threed.1a.mrc"])["start_iteration"] == 2
    assert X.build_job_commands("frealignrecon", BASE) == [["frealign_run_refine"]]
    files = X.build_job_files("frealignrecon", BASE)
    assert "raw_images" in files["mparameters"] and "/data/p/particles.star" in files["mparameters"]
    xm = X.build_job_commands("xmipprecon", BASE)
    assert [c[0] for c in xm[:3]] == ["xmipp_angular_project_library", "xmipp_angular_projection_matching",
                                      "xmipp_reconstruct_fourier"]
    assert len(xm) == 9
    ml = X.build_job_commands("xmippml3d", BASE)
    assert ml[0][0] == "xmipp_ml_refine3d" and ml[0][ml[0].index("--iter") + 1] == "3"


def test_parameters_are_validated():
    with pytest.raises(X.JobParamsError, match="model is required"):
        X.build_job_commands("relionrecon", {**BASE, "model": ""})
    with pytest.raises(X.JobParamsError, match="wrong type"):
        X.build_job_commands("relionrecon", {**BASE, "iterations": "three"})
    with pytest.raises(X.JobParamsError, match="symmetry"):
        X.build_job_commands("relionrecon", {**BASE, "symmetry": "c1; rm -rf /"})
    with pytest.raises(X.UnknownJobTypeError, match="known"):
        X.build_job_commands("cryosparc", BASE)


def test_registering_a_type_needs_no_dispatcher_change():
    jt = X.JobType("echo3", "echo three times", lambda p: dict(p), lambda p: [["echo", p["word"]]] * 3)
    X.register_job_type(jt)
    try:
        assert X.build_job_commands("echo3", {"word": "hi"}) == [["echo", "hi"]] * 3
        assert X.calc_next_cycle("echo3", {"word": "hi"}, []) is None
    finally:
        X.JOB_TYPES.pop("echo3")
