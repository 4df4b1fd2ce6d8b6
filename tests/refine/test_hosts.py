"""Processing hosts: scheduler headers, limits, commands and output parsing (pure, no scheduler needed)."""
from __future__ import annotations

import pytest

from appion.refine import hosts, schedulers
from appion.refine.hosts import HostLimits, JobFiles, JobRequest, ProcessingHost

REQUEST = JobRequest(name="recon1", nodes=2, ppn=4, walltime_h=24, cputime_h=96, mem_gb=16, queue="batch",
                     account="lab7", output_path="/data/appion/recon1/recon1.appionsub.log")

EXPECTED = {
    "slurm": """#SBATCH -J recon1
#SBATCH -N 2
#SBATCH --ntasks-per-node=4
#SBATCH -t 24:00:00
#SBATCH --mem=16G
#SBATCH -p batch
#SBATCH -A lab7
#SBATCH -o /data/appion/recon1/recon1.appionsub.log""",
    "pbs": """#PBS -N recon1
#PBS -l nodes=2:ppn=4
#PBS -l walltime=24:00:00
#PBS -l cput=96:00:00
#PBS -l mem=16gb
#PBS -q batch
#PBS -A lab7
#PBS -o /data/appion/recon1/recon1.appionsub.log
#PBS -j oe""",
    "sge": """#$ -N recon1
#$ -S /bin/bash
#$ -pe smp 8
#$ -l h_rt=24:00:00
#$ -l h_cpu=96:00:00
#$ -l mem_free=16G
#$ -q batch
#$ -A lab7
#$ -o /data/appion/recon1/recon1.appionsub.log
#$ -j y""",
    "lsf": """#BSUB -J recon1
#BSUB -n 8
#BSUB -R "span[ptile=4]"
#BSUB -W 24:00
#BSUB -c 96:00
#BSUB -M 16GB
#BSUB -q batch
#BSUB -P lab7
#BSUB -o /data/appion/recon1/recon1.appionsub.log""",
}


@pytest.mark.parametrize("scheduler", schedulers.SCHEDULERS)
def test_header_matches_expected_text(scheduler):
    host = ProcessingHost(name="c", scheduler=scheduler)
    req = hosts.calc_checked_request(host, REQUEST)
    assert "\n".join(schedulers.calc_header_lines(host, req)) == EXPECTED[scheduler]


def test_memory_per_process_and_fractional_times():
    req = JobRequest(name="j", walltime_h=1.5, cputime_h=0.25, pmem_mb=1500)
    lines = {s: schedulers.calc_header_lines(ProcessingHost("c", s), req) for s in schedulers.SCHEDULERS}
    assert "#SBATCH --mem-per-cpu=1500M" in lines["slurm"] and "#SBATCH -t 1:30:00" in lines["slurm"]
    assert "#PBS -l pmem=1500mb" in lines["pbs"] and "#PBS -l cput=0:15:00" in lines["pbs"]
    assert "#$ -l h_vmem=1500M" in lines["sge"]
    assert '#BSUB -R "rusage[mem=1500MB]"' in lines["lsf"] and "#BSUB -W 1:30" in lines["lsf"]


def test_host_defaults_and_extra_header_lines():
    host = hosts.calc_host("garibaldi", {"scheduler": "torque", "queue": "long", "account": "semc",
                                         "header_lines": ["-m n", "#PBS -W umask=022"], "pre_lines": ["module load x"]})
    req = hosts.calc_checked_request(host, JobRequest(name="j"))
    lines = schedulers.calc_header_lines(host, req)
    assert host.scheduler == "pbs"
    assert "#PBS -q long" in lines and "#PBS -A semc" in lines
    assert lines[-2:] == ["#PBS -m n", "#PBS -W umask=022"]


def test_over_limit_requests_are_refused_with_every_reason():
    host = ProcessingHost("small", "slurm", limits=HostLimits(max_nodes=1, max_ppn=2, max_walltime_h=4,
                                                              max_mem_gb=8))
    with pytest.raises(hosts.HostLimitError) as err:
        hosts.calc_checked_request(host, JobRequest(name="j", nodes=3, ppn=8, walltime_h=12, mem_gb=4))
    msg = str(err.value)
    assert "small" in msg and "nodes 3 is over the limit of 1" in msg and "processors per node 8" in msg
    assert "walltime 12 h is over the limit of 4 h" in msg and "memory" not in msg
    ok = hosts.calc_checked_request(host, JobRequest(name="j", nodes=1, ppn=2, walltime_h=4, mem_gb=8))
    assert ok.nodes == 1


def test_slurm_refuses_both_memory_kinds_and_header_injection():
    host = ProcessingHost("c", "slurm")
    with pytest.raises(hosts.HostLimitError, match="not both"):
        hosts.calc_checked_request(host, JobRequest(name="j", mem_gb=4, pmem_mb=100))
    with pytest.raises(hosts.HostLimitError, match="queue"):
        hosts.calc_checked_request(host, JobRequest(name="j", queue="debug\n#SBATCH --uid=0"))
    with pytest.raises(hosts.HostLimitError, match="job name"):
        hosts.calc_checked_request(host, JobRequest(name="a b"))


def test_hosts_from_config_keep_order_and_reject_typos():
    section = {"first": {"scheduler": "slurm", "queue": "debug", "max_nodes": 2},
               "second": {"scheduler": "lsf", "shell": "/bin/sh"}}
    found = hosts.calc_hosts_from_config(section)
    assert [h.name for h in found] == ["first", "second"]
    assert hosts.calc_pick_host(found, None).name == "first"
    assert hosts.calc_pick_host(found, "second").shell == "/bin/sh"
    assert found[0].limits.max_nodes == 2
    with pytest.raises(hosts.HostConfigError, match="max_node"):
        hosts.calc_hosts_from_config({"x": {"scheduler": "slurm", "max_node": 2}})
    with pytest.raises(hosts.HostConfigError, match="scheduler"):
        hosts.calc_hosts_from_config({"x": {"scheduler": "condor"}})
    with pytest.raises(hosts.HostConfigError, match="no processing host named"):
        hosts.calc_pick_host(found, "third")
    assert hosts.calc_hosts_from_config(None)[0].scheduler == "slurm"


def test_submit_status_cancel_commands():
    assert schedulers.calc_submit_command("slurm", "/r/a.job").argv == ["sbatch", "/r/a.job"]
    assert schedulers.calc_submit_command("pbs", "/r/a.job").argv == ["qsub", "/r/a.job"]
    lsf = schedulers.calc_submit_command("lsf", "/r/a.job")
    assert lsf.argv == ["bsub"] and lsf.stdin_path == "/r/a.job"
    assert schedulers.calc_status_command("slurm", 7) == ["squeue", "-h", "-j", "7", "-o", "%T"]
    assert schedulers.calc_cancel_command("slurm", 7) == ["scancel", "7"]
    assert schedulers.calc_cancel_command("lsf", 7) == ["bkill", "7"]
    assert schedulers.calc_cancel_command("sge", 7) == ["qdel", "7"]


def test_parse_job_ids():
    assert schedulers.parse_job_id("slurm", "Submitted batch job 4242\n") == 4242
    assert schedulers.parse_job_id("pbs", "1234.garibaldi.scripps.edu\n") == 1234
    assert schedulers.parse_job_id("sge", 'Your job 99 ("recon1") has been submitted\n') == 99
    assert schedulers.parse_job_id("lsf", "Job <5150> is submitted to queue <normal>.\n") == 5150
    with pytest.raises(hosts.SchedulerOutputError):
        schedulers.parse_job_id("slurm", "sbatch: error: Batch job submission failed\n")


def test_parse_states():
    assert schedulers.parse_state("slurm", 1, "PENDING\n") == "Q"
    assert schedulers.parse_state("slurm", 1, "RUNNING\n") == "R"
    assert schedulers.parse_state("slurm", 1, "COMPLETING\n") == "R"
    assert schedulers.parse_state("slurm", 1, "") is None
    pbs = ("Job id                    Name             User            Time Use S Queue\n"
           "------------------------- ---------------- --------------- -------- - -----\n"
           "1234.garibaldi            recon1           appion          00:00:01 R batch\n")
    assert schedulers.parse_state("pbs", 1234, pbs) == "R"
    assert schedulers.parse_state("pbs", 1234, pbs.replace(" R batch", " Q batch")) == "Q"
    assert schedulers.parse_state("pbs", 1234, pbs.replace(" R batch", " C batch")) is None
    assert schedulers.parse_state("pbs", 99, pbs) is None
    sge = ("job-ID  prior   name       user         state submit/start at     queue    slots\n"
           "-----------------------------------------------------------------------------\n"
           "     99 0.55500 recon1     appion       qw    11/21/2026 10:00:00           8\n"
           "    100 0.55500 other      appion       r     11/21/2026 10:00:00  all.q    8\n"
           "    101 0.55500 broken     appion       Eqw   11/21/2026 10:00:00           8\n")
    assert schedulers.parse_state("sge", 99, sge) == "Q"
    assert schedulers.parse_state("sge", 100, sge) == "R"
    assert schedulers.parse_state("sge", 101, sge) == "E"
    assert schedulers.parse_state("sge", 102, sge) is None
    assert schedulers.parse_state("lsf", 5, "RUN\n") == "R"
    assert schedulers.parse_state("lsf", 5, "EXIT\n") == "E"
    assert schedulers.parse_state("lsf", 5, "DONE\n") == "D"
    assert schedulers.parse_state("lsf", 5, "Job <5> is not found\n") is None
    assert schedulers.parse_final_state("slurm", "JobId=5 JobName=x\n   JobState=CANCELLED Reason=None") == ("E", "CANCELLED")
    assert schedulers.parse_final_state("slurm", "   JobState=COMPLETED Reason=None") == ("D", "COMPLETED")
    assert schedulers.parse_exit_code("0\n") == 0 and schedulers.parse_exit_code("143") == 143
    assert schedulers.parse_exit_code("") is None


def test_rundir_checks():
    roots = ["/data/appion"]
    assert str(hosts.calc_checked_rundir("/data/appion/s1/recon/r1", roots)) == "/data/appion/s1/recon/r1"
    for bad, why in [("/data/appion/../etc/r1", "'..'"), ("/tmp/r1", "outside"), ("relative/r1", "absolute"),
                     ("/data/appionX/r1", "outside"), ("/data/appion/r 1", "may only"),
                     ("/data/appion/r1\n#SBATCH -A x", "may only"), ("/data/appion/$(id)", "may only")]:
        with pytest.raises(hosts.RunDirError, match=why):
            hosts.calc_checked_rundir(bad, roots)
    with pytest.raises(hosts.RunDirError):
        hosts.calc_checked_runname("-rf")


def test_job_file_layout_quotes_every_argument():
    host = ProcessingHost("c", "slurm", pre_lines=("module load relion",))
    files = JobFiles("/data/appion/r1", "r1")
    text = hosts.calc_job_file_text(host, JobRequest(name="r1", output_path=files.output),
                                    [["prog", "a;b", "$(x)", "it's"]], files)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1] == "#SBATCH -J r1"
    assert lines.index("module load relion") < lines.index("printf 'RUNNING\\n' > /data/appion/r1/r1.phase")
    assert lines[-1] == "prog 'a;b' '$(x)' 'it'\"'\"'s'"
    assert any(line.startswith("trap ") and line.endswith(" EXIT") for line in lines)


def test_site_hosts_file_and_jobs_settings(tmp_path):
    import dataclasses

    from appion.base.config import ConfigError, load_config
    from appion.refine import retrieve

    (tmp_path / "hosts.toml").write_text('[hosts.garibaldi]\nscheduler = "torque"\nqueue = "q1"\n'
                                         '[hosts.slurmy]\nscheduler = "slurm"\nmax_mem_gb = 64\n')
    base = load_config()
    config = dataclasses.replace(base, home=tmp_path, extra={"jobs": {"hosts_file": "hosts.toml",
                                                                      "archive_after_s": 60,
                                                                      "rundir_roots": [str(tmp_path)]}})
    found = retrieve.retrieve_hosts(config)
    assert [(h.name, h.scheduler) for h in found] == [("garibaldi", "pbs"), ("slurmy", "slurm")]
    settings = retrieve.retrieve_jobs_settings(config)
    assert settings.archive_after_s == 60 and settings.expire_after_s is None
    assert settings.rundir_roots == (str(tmp_path.resolve()),)
    assert retrieve.retrieve_jobs_settings(dataclasses.replace(base, extra={})).rundir_roots == \
        (str(base.appion_base),)
    with pytest.raises(ConfigError, match="expire_after_s"):
        retrieve.retrieve_jobs_settings(dataclasses.replace(base, extra={"jobs": {"expire_after_s": "soon"}}))
    with pytest.raises(ConfigError, match="unknown keys"):
        retrieve.retrieve_hosts(dataclasses.replace(base, extra={"hosts": {"x": {"scheduler": "slurm", "qeue": 1}}}))


def test_bare_request_writes_only_the_job_lines():
    """Nothing optional set: name and nodes × ppn only (SGE also shell and the host's parallel environment)."""
    req = JobRequest(name="j", nodes=2, ppn=3)
    got = {s: schedulers.calc_header_lines(ProcessingHost("c", s, shell="/bin/sh", sge_pe="mpi"), req)
           for s in schedulers.SCHEDULERS}
    assert got == {"slurm": ["#SBATCH -J j", "#SBATCH -N 2", "#SBATCH --ntasks-per-node=3"],
                   "pbs": ["#PBS -N j", "#PBS -l nodes=2:ppn=3"],
                   "sge": ["#$ -N j", "#$ -S /bin/sh", "#$ -pe mpi 6"],
                   "lsf": ["#BSUB -J j", "#BSUB -n 6", '#BSUB -R "span[ptile=3]"']}
    # Slurm has no CPU-time limit: a cputime request adds nothing there, a line elsewhere.
    with_cput = JobRequest(name="j", nodes=2, ppn=3, cputime_h=2)
    assert schedulers.calc_header_lines(ProcessingHost("c", "slurm"), with_cput) == got["slurm"]
    assert schedulers.calc_header_lines(ProcessingHost("c", "lsf"), with_cput)[-1] == "#BSUB -c 2:00"


def test_other_scheduler_commands_and_unknown_scheduler():
    assert schedulers.calc_submit_command("sge", "/r/a.job").argv == ["qsub", "/r/a.job"]
    assert schedulers.calc_submit_command("slurm", "/r/a.job").stdin_path is None
    assert schedulers.calc_status_command("pbs", 7) == ["qstat", "7"]
    assert schedulers.calc_status_command("sge", 7) == ["qstat", "-u", "*"]
    assert schedulers.calc_status_command("lsf", 7) == ["bjobs", "-noheader", "-o", "stat", "7"]
    assert schedulers.calc_cancel_command("pbs", 7) == ["qdel", "7"]
    assert schedulers.calc_final_state_command("slurm", 7) == ["scontrol", "show", "job", "7"]
    assert schedulers.calc_final_state_command("pbs", 7) is None
    assert schedulers.parse_final_state("lsf", "JobState=COMPLETED") == (None, "")
    with pytest.raises(hosts.SchedulerOutputError, match="unknown state 'WEIRD'"):
        schedulers.parse_state("lsf", 5, "WEIRD\n")
    # An unchecked scheduler name is a configuration error (the tracker logs those and carries on).
    host = ProcessingHost("c", "condor")
    for call in (lambda: schedulers.calc_header_lines(host, JobRequest(name="j")),
                 lambda: schedulers.calc_submit_command("condor", "/r/a.job"),
                 lambda: schedulers.calc_status_command("condor", 7), lambda: schedulers.calc_cancel_command("condor", 7),
                 lambda: schedulers.parse_job_id("condor", "1\n"), lambda: schedulers.parse_state("condor", 1, "")):
        with pytest.raises(hosts.HostConfigError, match="unknown scheduler 'condor'"):
            call()
