"""Job types: parameters → job-file commands, checked against each program's own option list (pure,
except the RELION checks, which ask the installed relion_refine for its --help)."""
from __future__ import annotations

import os
import re

import pytest

from appion.refine.calc import classic as C
from appion.refine.calc import external as X
from appion.refine.calc import refinejobs as R
from appion.refine.programs import detect_relion_version, read_help_options

BASE = {"rundir": "/data/r1", "stack": "/data/p/particles.star", "model": "/data/p/model.mrc", "apix": "2.5",
        "boxsize": "64", "iterations": "3"}
# EMAN 1.9 `refine` usage: refine <iterations> mask=<rad> [options] (EMAN 1 documentation, "refine" program).
EMAN1_REFINE_OPTIONS = {"mask", "maxshift", "hard", "sym", "pad", "imask", "amask", "ang", "classkeep", "classiter",
                        "median", "phasecls", "fscls", "refine", "goodbad", "perturb", "dfilt", "xfiles", "tree",
                        "ctfcw", "proc", "usefilt", "finalavg", "coran", "lpfilt", "nosym", "speed", "3dit",
                        "3dit2", "euler2", "sep", "shrink", "automask2", "amask"}
# Frealign 9.11 mparameters keys (the keys its shell scripts read with `grep <key> mparameters_run`).
FREALIGN9_KEYS = {"cluster_type", "nprocessor_ref", "nprocessor_rec", "mem_per_cpu", "MODE", "start_process",
                  "end_process", "res_high_refinement", "res_high_class", "nclasses", "data_input", "raw_images",
                  "image_contrast", "outer_radius", "inner_radius", "mol_mass", "Symmetry", "pix_size", "dstep",
                  "Aberration", "Voltage", "Amp_contrast", "XSTD", "PBC", "parameter_mask", "refineangleinc",
                  "refineshiftinc", "res_reconstruction", "res_low_refinement", "thresh_reconst", "thresh_refine",
                  "DANG", "ITMAX", "FMAG", "FDEF", "FASTIG", "FPART", "FFILT", "FBEAUT", "FMATCH", "FBOOST",
                  "RBfactor", "mask_file", "focus_mask", "nbootstrap", "restart_after_crash", "delete_scratch"}


def _relion_help() -> set[str]:
    options = read_help_options("relion_refine")
    if options is None:
        if os.environ.get("CI"):
            pytest.fail("relion_refine is required in CI (apt-get install relion)")
        pytest.skip("relion_refine is not installed")
    return options


def test_registered_types_include_the_classic_web_types():
    assert {"generic", "emanrecon", "frealignrecon", "relionrecon", "xmipprecon", "xmippml3d",
            "makeddrawframestack", "ctfestimate", "gctf", "jobtest", "sparxisac"} <= set(X.JOB_TYPES)
    for name in ("makeddrawframestack", "ctfestimate", "gctf"):
        assert X.calc_is_command_type(name)
        assert X.build_job_commands(name, {"command": ["prog.py", "--x=1"]}) == [["prog.py", "--x=1"]]
    assert X.resolve_job_type("madeuptype") == "generic" and X.resolve_job_type("gctf") == "gctf"
    assert not X.calc_is_command_type("relionrecon")


def test_generic_runs_the_command_as_given():
    cmd = ["prog.py", "--x=1", "a;b"]
    assert X.build_job_commands("generic", {"command": cmd}) == [cmd]
    with pytest.raises(X.JobParamsError, match="shell string"):
        X.build_job_commands("generic", {"command": "prog.py --x=1"})
    with pytest.raises(X.JobParamsError):
        X.build_job_commands("generic", {"command": []})


def test_relion_31_has_no_angpix_and_30_has_it_and_ctf_flags():
    [argv] = X.build_job_commands("relionrecon", {**BASE, "ctf": "true"})
    assert argv[0] == "relion_refine" and "--angpix" not in argv and "--ctf" in argv
    assert argv[argv.index("--i") + 1] == BASE["stack"] and argv[argv.index("--ref") + 1] == BASE["model"]
    assert argv[argv.index("--o") + 1] == "/data/r1/run" and argv[argv.index("--iter") + 1] == "3"
    [old] = X.build_job_commands("relionrecon", {**BASE, "relion_version": "3.0.8"})
    assert old[old.index("--angpix") + 1] == "2.5" and "--ctf" not in old
    [mpi] = X.build_job_commands("relionrecon", {**BASE, "nproc": 8, "threads": 2})
    assert mpi[:4] == ["mpirun", "-np", "8", "relion_refine_mpi"] and mpi[mpi.index("--j") + 1] == "2"
    [cont] = X.build_job_commands("relionrecon", {**BASE, "start_iteration": 3})
    assert cont[cont.index("--continue") + 1] == "/data/r1/run_it002_optimiser.star" and "--i" not in cont
    assert [R.calc_healpix_order(a) for a in (60, 30, 15, 7.5, 3.7, 1.8)] == [0, 1, 2, 3, 4, 5]


def test_relion_command_uses_only_options_the_installed_relion_refine_lists():
    """RELION 3.1.3 from Debian (bash .ci/test installs it): every option appion writes is in its --help."""
    known = _relion_help()
    assert "--angpix" not in known  # the installed RELION is 3.1+, which refuses it
    version = ".".join(map(str, detect_relion_version()))
    params = {**BASE, "relion_version": version, "ctf": True, "ctf_intact_first_peak": True,
              "ctf_corrected_ref": True, "ctf_phase_flipped": True}
    for extra in ({}, {"start_iteration": 2}, {"nproc": 3}):
        [argv] = X.build_job_commands("relionrecon", {**params, **extra})
        used = {a for a in argv if a.startswith("--")}
        # --continue is RELION's continue-mode switch, read before the option list exists (not in --help)
        assert used <= known | {"--continue"}, used - known


def test_eman_frealign_xmipp_follow_their_documented_formats():
    eman = X.build_job_commands("emanrecon", {**BASE, "stack": "/data/p/start.hed"})
    assert eman[:3] == [["ln", "-sfn", "/data/p/start.hed", "/data/r1/start.hed"],
                        ["ln", "-sfn", "/data/p/start.img", "/data/r1/start.img"],
                        ["ln", "-sfn", "/data/p/model.mrc", "/data/r1/threed.0a.mrc"]]
    refine = eman[3]
    assert refine[:2] == ["refine", "3"] and "sym=c1" in refine
    assert {a.split("=")[0] for a in refine[2:]} <= EMAN1_REFINE_OPTIONS
    assert X.calc_next_cycle("emanrecon", BASE, ["threed.0a.mrc", "threed.1a.mrc"])["start_iteration"] == 2

    physics = {"voltage_kV": 300, "cs_mm": 2.7, "amp_contrast": 0.07, "parfile": "/data/p/params.000.par",
               "stack": "/data/p/particles.mrc"}
    assert X.build_job_commands("frealignrecon", {**BASE, **physics}) == [
        ["ln", "-sfn", "/data/p/params.000.par", "/data/r1/run_1_r1.par"],
        ["ln", "-sfn", "/data/p/model.mrc", "/data/r1/run_1_r1.mrc"], ["frealign_run_refine"]]
    text = X.build_job_files("frealignrecon", {**BASE, **physics, "cs_mm": 2.0})["mparameters"]
    values = dict(re.match(r"(\S+)\s+(.*)", line).groups() for line in text.splitlines())
    assert set(values) <= FREALIGN9_KEYS
    assert (values["Voltage"], values["Aberration"], values["Amp_contrast"]) == ("300", "2", "0.07")
    assert (values["raw_images"], values["data_input"], values["start_process"], values["end_process"]) == \
        ("/data/p/particles.mrc", "run", "2", "4")
    with pytest.raises(X.JobParamsError, match=r"voltage_kV \(--kv\), cs_mm \(--cs\)"):
        X.build_job_files("frealignrecon", {**BASE, "amp_contrast": 0.1})

    xm = X.build_job_commands("xmipprecon", {**BASE, "mask": "/data/p/maskvol.mrc"})
    assert [c[0] for c in xm[:4]] == ["xmipp_angular_project_library", "xmipp_angular_projection_matching",
                                      "xmipp_reconstruct_fourier", "xmipp_transform_mask"]
    assert len(xm) == 12
    ml = X.build_job_commands("xmippml3d", BASE)
    assert ml[0][0] == "xmipp_ml_refine3d" and ml[0][ml[0].index("--iter") + 1] == "3"


def test_next_cycle_counts_iterations():
    names = ["run_it001_class001.mrc", "run_it002_class001.mrc", "run_it002_model.star"]
    nxt = X.calc_next_cycle("relionrecon", BASE, names)
    assert nxt["start_iteration"] == 3 and nxt["iterations"] == 3
    assert X.calc_next_cycle("relionrecon", BASE, names + ["run_it003_class001.mrc"]) is None
    with pytest.raises(X.CycleError, match="no iteration output"):
        X.calc_next_cycle("relionrecon", BASE, ["other.txt"])
    assert X.calc_next_cycle("generic", {"command": ["x"]}, []) is None


def test_classic_refine_options_flow_into_the_parameters():
    argv = ["-s", "start.hed", "-N", "500", "-n", "r1", "--modelnames=a.mrc,b.mrc", "--startIter=1", "--endIter=8",
            "--symmetry=C7 (z)", "--angSampRate=4x10:4x5", "--outerMaskRadius=30", "--ini_high=40", "--ctf=True",
            "--kv=300", "--cs=2.7", "--rpn=4", "--localhost=head", "--weird_option=1"]
    params, warnings = C.calc_refine_params(argv, set(R.REFINE_PARAM_NAMES))
    assert params["iterations"] == "8" and params["start_iteration"] == "1" and params["symmetry"] == "c7"
    assert params["angle_deg"] == "10" and params["mask_radius_px"] == "30" and params["lowpass_A"] == "40"
    assert params["stack"] == "start.hed" and "r1" not in params.values()
    assert any(w.startswith("--totalpart has no effect") for w in warnings)
    assert params["model"] == "a.mrc" and params["ctf"] == "True" and params["voltage_kV"] == "300"
    assert any("angle_deg varies per iteration" in w for w in warnings)
    assert any(w.startswith("--localhost has no effect") for w in warnings)
    assert any(w.startswith("--weird_option is not an option") for w in warnings)
    assert any("single-model refinement uses a.mrc" in w for w in warnings)
    assert C.calc_iteration_values("4x10:2x8", 8) == ["10"] * 4 + ["8"] * 4
    assert C.calc_iteration_values("5", 3) == ["5", "5", "5"]
    [argv8] = X.build_job_commands("relionrecon", {**BASE, **params, "stack": "/d/p.star", "model": "/d/m.mrc"})
    assert argv8[argv8.index("--iter") + 1] == "8" and argv8[argv8.index("--sym") + 1] == "c7"
    assert argv8[argv8.index("--particle_diameter") + 1] == "150"  # 2 × 30 px × 2.5 Å


def test_parameters_are_validated():
    with pytest.raises(X.JobParamsError, match="model is required"):
        X.build_job_commands("relionrecon", {**BASE, "model": ""})
    with pytest.raises(X.JobParamsError, match="wrong type"):
        X.build_job_commands("relionrecon", {**BASE, "iterations": "three"})
    with pytest.raises(X.JobParamsError, match="symmetry"):
        X.build_job_commands("relionrecon", {**BASE, "symmetry": "c1; rm -rf /"})
    with pytest.raises(X.JobParamsError, match="relion_version"):
        X.build_job_commands("relionrecon", {**BASE, "relion_version": "latest"})
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
