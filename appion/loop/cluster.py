"""Dask clusters for the loop: a LocalCluster on this machine, or batch-scheduler jobs via dask-jobqueue.

Configuration is the Dask way: dask-jobqueue reads `~/.config/dask/jobqueue.yaml` (or DASK_JOBQUEUE__SLURM__...
environment variables) for queue, account, memory, walltime ...; a command-line flag, when given,
overrides that.  Three settings protect near-realtime work from the failure modes sites hit:

* workers get `--lifetime` (a few minutes short of the walltime) with `--lifetime-stagger`, so a
  batch job retires gracefully, its tasks moving elsewhere, before the scheduler kills it;
* `distributed.scheduler.unknown-task-duration` is raised so adaptive scaling does not judge the
  first movies as instant and cancel jobs that were just submitted;
* NUMBA_NUM_THREADS is set to the cores a task may use (there is no CPU binding in a job), and each
  worker runs one task at a time, so a task's numba/FFT threads own the job's cores;
* one malloc arena and passive OpenMP waiting (WORKER_PROCESS_ENVIRON), and the numba cache directory
  (`[paths] numba_cache`) so every worker loads what one compiled;
* the BLAS/OpenMP thread pools (OpenBLAS, MKL, OpenMP) get one thread: scipy's BLAS pool otherwise
  starts a thread per core and, competing with numba and other workers, slows the CTF fit badly on
  busy machines.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass

import dask

from appion.loop.calc import LoopError

log = logging.getLogger("appion.cluster")

KINDS = ("local", "slurm", "pbs", "sge", "lsf")
UNKNOWN_TASK_DURATION = "60s"  # movies take seconds to minutes; the default 500ms makes adapt cancel fresh jobs
SINGLE_THREAD_POOLS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")  # one thread each on workers


@dataclass(frozen=True)
class ClusterSettings:
    """Where tasks run.  None means: the Dask configuration's value (or a sensible default)."""

    kind: str = "local"
    threads_per_task: int = 1  # numba/FFT threads one task uses
    workers: int | None = None  # local: worker processes (default cores // threads_per_task)
    minimum: int = 0  # batch: adapt(minimum, maximum) in jobs
    maximum: int | None = None  # batch: default 2
    cores: int | None = None  # batch: cores per job (default threads_per_task)
    memory: str | None = None  # batch: memory per job, e.g. "4GB"
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None  # "HH:MM:SS"
    lifetime: str | None = None  # worker lifetime (default: walltime minus a margin)
    lifetime_stagger: str = "60s"
    gpus: int = 0  # a "GPU" worker resource per worker, for external GPU programs
    interface: str | None = None
    log_directory: str | None = None
    dashboard_address: str = ":8787"


def calc_walltime_seconds(walltime: str) -> int:
    """Seconds in a Slurm-style walltime: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    text = walltime.strip()
    if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", text):
        raise ValueError(f"walltime {walltime!r} is not [D-]HH:MM:SS")
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def calc_worker_lifetime(walltime: str, stagger: str = "60s") -> str:
    """A worker lifetime that ends before the walltime: walltime − 2×stagger − 60 s, at least half the walltime."""
    total = calc_walltime_seconds(walltime)
    margin = 2 * int(dask.utils.parse_timedelta(stagger)) + 60
    return f"{max(total // 2, total - margin)}s"


# Set before a worker process starts (glibc and OpenMP read them once): one malloc arena, so the engines' large
# per-frame buffers come from one heap that prepare_worker_process() keeps (a task runs in a worker thread; with
# per-thread arenas every such buffer is a fresh mmap and its page faults: a 4096² × 40 movie took 7.0 s in a
# worker against 4.7 s in `appion motion align`), and OpenMP threads that sleep when idle.
WORKER_PROCESS_ENVIRON = {"MALLOC_ARENA_MAX": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def calc_worker_environ(threads_per_task: int) -> dict[str, str]:
    """Environment of worker processes: numba gets the task's threads, BLAS/OpenMP pools one each, one malloc
    arena (WORKER_PROCESS_ENVIRON), and the numba cache directory of this process (appion.base.config)."""
    environ = {"NUMBA_NUM_THREADS": str(threads_per_task), **{name: "1" for name in SINGLE_THREAD_POOLS},
               **WORKER_PROCESS_ENVIRON}
    if os.environ.get("NUMBA_CACHE_DIR"):
        environ["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    return environ


def calc_worker_count(cpu_count: int, threads_per_task: int) -> int:
    return max(1, cpu_count // max(1, threads_per_task))


def _jobqueue_class(kind: str):
    import dask_jobqueue

    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster, "sge": dask_jobqueue.SGECluster,
            "lsf": dask_jobqueue.LSFCluster}[kind]


def calc_jobqueue_kwargs(settings: ClusterSettings) -> dict:
    """Keyword arguments for a dask-jobqueue cluster: flags given win over jobqueue.yaml, the rest is left to it."""
    conf = dask.config.get(f"jobqueue.{settings.kind}", default={}) or {}
    cores = settings.cores or conf.get("cores") or settings.threads_per_task
    memory = settings.memory or conf.get("memory") or f"{max(1, 2 * cores)}GB"
    walltime = settings.walltime or conf.get("walltime") or "01:00:00"
    lifetime = settings.lifetime or calc_worker_lifetime(walltime, settings.lifetime_stagger)
    extra_args = list(conf.get("worker-extra-args") or [])
    extra_args += ["--lifetime", lifetime, "--lifetime-stagger", settings.lifetime_stagger]
    extra_args += ["--nthreads", "1"]  # one task per worker: its numba threads own the job's cores
    if settings.gpus:
        extra_args += ["--resources", f"GPU={settings.gpus}"]
    prologue = list(conf.get("job-script-prologue") or [])
    prologue.append(f"export NUMBA_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{cores}}}" if settings.kind == "slurm"
                    else f"export NUMBA_NUM_THREADS={cores}")
    prologue += [f"export {name}=1" for name in SINGLE_THREAD_POOLS]
    prologue += [f"export {name}={value}" for name, value in WORKER_PROCESS_ENVIRON.items()]
    if os.environ.get("NUMBA_CACHE_DIR"):
        prologue.append(f"export NUMBA_CACHE_DIR={shlex.quote(os.environ['NUMBA_CACHE_DIR'])}")
    kwargs = {"cores": cores, "memory": memory, "processes": 1, "walltime": walltime,
              "worker_extra_args": extra_args, "job_script_prologue": prologue}
    for name in ("queue", "account", "interface", "log_directory"):
        value = getattr(settings, name)
        if value is not None:
            kwargs[name] = value
    if settings.kind == "slurm" and "job_cpu" not in kwargs:
        kwargs["job_cpu"] = cores
    kwargs["scheduler_options"] = {"dashboard_address": settings.dashboard_address}
    return kwargs


class ClusterError(LoopError):
    """The cluster cannot be used as asked (e.g. its scheduler's submit command is not installed here)."""


def check_submit_command(kind: str, command: str, path: str | None = None) -> str:
    """The full path of the batch scheduler's submit command (e.g. qsub for --cluster pbs), else ClusterError
    naming it: without it dask-jobqueue would retry submitting forever and the loop would wait silently."""
    found = shutil.which(command, path=path)
    if found is None:
        raise ClusterError(f"--cluster {kind}: the scheduler's submit command {command!r} is not on PATH "
                           f"({len((path or os.environ.get('PATH', '')).split(os.pathsep))} directories searched); "
                           "install the scheduler's client or choose another --cluster")
    return found


def check_cluster_commands(kind: str) -> str | None:
    """For a batch cluster kind: the path of its submit command (ClusterError when missing); None for local."""
    if kind == "local":
        return None
    if kind not in KINDS:
        raise ClusterError(f"unknown cluster kind {kind!r} (choose from {', '.join(KINDS)})")
    return check_submit_command(kind, _jobqueue_class(kind).job_cls.submit_command)


def start_cluster(settings: ClusterSettings):
    """Start the cluster and a client; returns (cluster, client, n_task_slots).

    n_task_slots is how many tasks can run at once at full size (local workers, or maximum jobs),
    which the loop uses to size its in-flight window.
    """
    from distributed import Client, LocalCluster

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler runs in this process
    dask.config.set({"distributed.scheduler.unknown-task-duration": UNKNOWN_TASK_DURATION,
                     **{f"distributed.nanny.pre-spawn-environ.{name}": value
                        for name, value in calc_worker_environ(settings.threads_per_task).items()}})
    if settings.kind == "local":
        workers = settings.workers or calc_worker_count(os.cpu_count() or 1, settings.threads_per_task)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               resources={"GPU": settings.gpus} if settings.gpus else None,
                               dashboard_address=settings.dashboard_address, silence_logs=logging.WARNING)
        slots = workers
    elif settings.kind in KINDS:
        check_cluster_commands(settings.kind)
        cls = _jobqueue_class(settings.kind)
        cluster = cls(**calc_jobqueue_kwargs(settings))
        maximum = settings.maximum if settings.maximum is not None else 2
        cluster.adapt(minimum=settings.minimum, maximum=maximum)
        slots = max(1, maximum)
    else:
        raise ValueError(f"unknown cluster kind {settings.kind!r} (choose from {', '.join(KINDS)})")
    client = Client(cluster)
    return cluster, client, slots


def describe_dashboard(client) -> str:
    """The dashboard address, or why there is none (it needs bokeh)."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # scheduler not answering: say so rather than fail the start
        services = {}
    if "dashboard" not in services:
        return "unavailable (install bokeh>=3.1 for the Dask dashboard)"
    return client.dashboard_link


def stop_cluster(cluster, client) -> None:
    """Close the client and the cluster; for batch clusters this cancels every job still queued or running."""
    try:
        client.close(timeout=10)
    except Exception as exc:  # a dead scheduler must not stop us from cancelling jobs
        log.warning("closing the Dask client: %s", exc)
    try:
        cluster.close(timeout=30)
    except Exception as exc:
        log.warning("closing the cluster: %s", exc)
