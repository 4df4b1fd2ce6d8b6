"""Processing hosts as data, and the pure functions that speak to their schedulers.

A site lists its clusters once (config `[hosts.<name>]`, see `calc_hosts_from_config`);
everything a scheduler needs — header lines, the submit/status/cancel argument lists, how
to read a job id or a state from its output — is computed here without running anything,
so each scheduler's dialect can be tested as text.  A scheduler is one `SchedulerDialect`
entry of `DIALECTS` (directive templates, commands, output parsers); one set of functions
serves them all.  Running the commands is the tracker's job (appion.refine.tracker).

A site's hosts, in `$APPION_HOME/config.toml` (or a file named by `[jobs] hosts_file`); the
first host is the default:

    [hosts.garibaldi]
    scheduler = "torque"              # slurm | pbs (torque) | sge | lsf
    queue = "batch"                   # default queue / partition
    account = ""                      # optional
    shell = "/bin/bash"
    max_nodes = 8                     # limits (any may be left out): max_ppn, max_walltime_h,
    max_walltime_h = 240              #   max_cputime_h, max_mem_gb, max_pmem_mb
    header_lines = ["-m n"]           # extra directives (prefix added unless the line starts with #)
    pre_lines = ["module load relion/3.1"]   # shell lines run before the commands

    [hosts.gpu1]                      # a cluster reached through ssh (appion.refine.remote)
    scheduler = "slurm"
    login = "alice@gpu1.example.org"  # user@host or an alias of the user's ~/.ssh/config; keys only (BatchMode)
    port = 22                         # optional
    remote_rundir = "/home/alice/appion"  # optional: run directories are copied below it (a local
                                      #   /data/appion/s/recon/r1 is /home/alice/appion/data/appion/s/recon/r1
                                      #   there) and outputs copied back; unset: the same paths on both sides
                                      #   (shared storage), nothing copied, only the scheduler commands run there
    ssh_options = ["IdentityFile=~/.ssh/id_gpu1"]   # optional, each passed as `-o KEY=VALUE`
    remote_env = {SLURM_CONF = "/etc/slurm-gpu/slurm.conf"}  # optional, set for every remote command

    [jobs]
    rundir_roots = ["/data/appion"]   # job files are only written below these (default: appion_base)
    archive_after_s = 604800          # COMPLETED -> ARCHIVED (manifest, files read-only)
    expire_after_s = 2592000          # -> EXPIRED (run directory removed, database rows kept)
    poll_interval_s = 10

Resources follow classic Appion's processing hosts (walltime and cputime in hours, memory in
GB, memory per process in MB).  Scheduler dialects:

| resource         | Slurm                  | PBS/Torque         | SGE                  | LSF                       |
|------------------|------------------------|--------------------|----------------------|---------------------------|
| nodes × ppn      | -N n, --ntasks-per-node| -l nodes=n:ppn=p   | -pe <pe> n·p         | -n n·p, -R "span[ptile=p]"|
| walltime         | -t H:MM:SS             | -l walltime=       | -l h_rt=             | -W H:MM                   |
| cputime          | (no such limit)        | -l cput=           | -l h_cpu=            | -c H:MM                   |
| memory           | --mem=XG               | -l mem=Xgb         | -l mem_free=XG       | -M XGB                    |
| memory/process   | --mem-per-cpu=XM       | -l pmem=Xmb        | -l h_vmem=XM         | -R "rusage[mem=XMB]"      |
| queue / account  | -p / -A                | -q / -A            | -q / -A              | -q / -P                   |
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

SCHEDULER_ALIASES = {"torque": "pbs", "pbs": "pbs", "slurm": "slurm", "sge": "sge", "lsf": "lsf",
                     "gridengine": "sge"}

# Header values end up on '#SBATCH ...' lines: a newline would smuggle in a directive, a space an option.
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_.+:@=,-]+\Z")  # \Z: `$` would let a final newline pass
# Run directories appear in header lines (output file) and in the job file: no whitespace, quotes,
# shell or scheduler pattern characters (% is a filename pattern for sbatch).
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+:@=,~-]+\Z")


class HostConfigError(ValueError):
    """The site's processing-host configuration is wrong (names the host and the key)."""


class HostLimitError(ValueError):
    """A request exceeds what the chosen host allows (or is not a valid request)."""


class RunDirError(ValueError):
    """A run directory is not acceptable for a job file."""


class SchedulerOutputError(ValueError):
    """A scheduler's output could not be understood."""


@dataclass(frozen=True)
class HostLimits:
    """Upper bounds a site allows on a host; None means no limit."""

    max_nodes: int | None = None
    max_ppn: int | None = None
    max_walltime_h: float | None = None
    max_cputime_h: float | None = None
    max_mem_gb: float | None = None
    max_pmem_mb: float | None = None


@dataclass(frozen=True)
class RemoteLogin:
    """How a host's scheduler is reached when it runs on another machine (config `login` and friends).

    rundir_root "" means shared storage: the run directory has the same path on both sides, so nothing
    is copied; otherwise every local path below the run roots lives at rundir_root + that path there.
    """

    login: str  # user@host, or a host (alias) of the user's ssh config
    port: int | None = None
    rundir_root: str = ""
    ssh_options: tuple[str, ...] = ()  # "Key=Value", each given to ssh as -o
    env: tuple[tuple[str, str], ...] = ()  # (NAME, value) set for every remote command

    @property
    def copies(self) -> bool:
        return bool(self.rundir_root)


@dataclass(frozen=True)
class ProcessingHost:
    """One cluster (or workstation queue) a job can be sent to."""

    name: str
    scheduler: str  # one of SCHEDULERS
    queue: str = ""  # default queue / partition
    account: str = ""
    shell: str = "/bin/bash"
    limits: HostLimits = field(default_factory=HostLimits)
    header_lines: tuple[str, ...] = ()  # extra directives ('--exclusive' gets the prefix; '#...' is verbatim)
    pre_lines: tuple[str, ...] = ()  # shell lines run before the commands (module load ...), written verbatim
    sge_pe: str = "smp"  # SGE parallel environment for slots
    remote: RemoteLogin | None = None  # None: the scheduler commands run on this machine


@dataclass(frozen=True)
class JobRequest:
    """What a job asks of a host (classic runJob.py units)."""

    name: str
    nodes: int = 1
    ppn: int = 1
    walltime_h: float | None = None
    cputime_h: float | None = None
    mem_gb: float | None = None
    pmem_mb: float | None = None
    queue: str = ""
    account: str = ""
    output_path: str = ""  # scheduler's stdout/stderr file


@dataclass(frozen=True)
class SubmitCommand:
    """An argument list, plus a file for stdin when the scheduler reads the script there (LSF)."""

    argv: list[str]
    stdin_path: str | None = None


# ---------------------------------------------------------------- configuration
def _opt_float(host: str, spec: dict, key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise HostConfigError(f"host {host!r}: {key} must be a positive number, not {value!r}")
    return float(value)


def _opt_int(host: str, spec: dict, key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HostConfigError(f"host {host!r}: {key} must be a positive integer, not {value!r}")
    return value


def _lines(host: str, spec: dict, key: str) -> tuple[str, ...]:
    value = spec.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v for v in value):
        raise HostConfigError(f"host {host!r}: {key} must be a list of single-line strings")
    return tuple(value)


_REMOTE_KEYS = {"login", "port", "remote_rundir", "ssh_options", "remote_env"}
_HOST_KEYS = {"name", "scheduler", "queue", "account", "shell", "header_lines", "pre_lines", "sge_pe", "max_nodes",
              "max_ppn", "max_walltime_h", "max_cputime_h", "max_mem_gb", "max_pmem_mb", *_REMOTE_KEYS}
# user@host: no leading '-' anywhere (ssh would read it as an option), nothing a shell or ssh would interpret.
_LOGIN = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
# ssh -o Key=Value; the value reaches rsync's -e parser, which knows quotes but not backslashes: none of those.
_SSH_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*=[^'\"\\\n\r\0]+\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def calc_remote_login(host: str, spec: dict) -> RemoteLogin | None:
    """The `login`, `port`, `remote_rundir`, `ssh_options`, `remote_env` keys of a host table (None without login)."""
    login = spec.get("login")
    if login is None:
        extra = sorted(k for k in _REMOTE_KEYS if k in spec)
        if extra:
            raise HostConfigError(f"host {host!r}: {', '.join(extra)} need login = \"user@host\"")
        return None
    if not (isinstance(login, str) and _LOGIN.match(login)):
        raise HostConfigError(f"host {host!r}: login must be user@host (letters, digits and _.-), not {login!r}")
    port = spec.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise HostConfigError(f"host {host!r}: port must be an integer 1-65535, not {port!r}")
    root = spec.get("remote_rundir", "")
    if root and not (isinstance(root, str) and root.startswith("/") and _SAFE_PATH.match(root)
                     and ".." not in PurePosixPath(root).parts):
        raise HostConfigError(f"host {host!r}: remote_rundir must be an absolute path of letters, digits and "
                              f"_./+:@=,~- (no '..'), not {root!r}")
    options = spec.get("ssh_options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) and _SSH_OPTION.match(o) for o in options):
        raise HostConfigError(f"host {host!r}: ssh_options must be a list of \"Key=Value\" strings (no quotes, "
                              f"backslashes or newlines), not {options!r}")
    env = spec.get("remote_env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str)
                                            and not set(v) & {"\n", "\r", "\0"} for k, v in env.items()):
        raise HostConfigError(f"host {host!r}: remote_env must be a table of NAME = \"value\" (single-line strings)")
    return RemoteLogin(login=login, port=port, rundir_root=str(PurePosixPath(root)) if root else "",
                       ssh_options=tuple(options), env=tuple(env.items()))


def calc_host(name: str, spec: dict) -> ProcessingHost:
    """One host from its config table, checked (unknown keys are errors: a typo must not pass silently)."""
    if not isinstance(spec, dict):
        raise HostConfigError(f"host {name!r}: must be a table")
    unknown = sorted(set(spec) - _HOST_KEYS)
    if unknown:
        raise HostConfigError(f"host {name!r}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_HOST_KEYS))})")
    scheduler = SCHEDULER_ALIASES.get(str(spec.get("scheduler", "")).lower())
    if scheduler is None:
        raise HostConfigError(f"host {name!r}: scheduler must be one of slurm, pbs (torque), sge, lsf; "
                              f"got {spec.get('scheduler')!r}")
    for key in ("queue", "account", "sge_pe"):
        value = spec.get(key, "")
        if value and not (isinstance(value, str) and _SAFE_WORD.match(value)):
            raise HostConfigError(f"host {name!r}: {key} {value!r} may only hold letters, digits and _.+:@=,-")
    shell = spec.get("shell", "/bin/bash")
    if not (isinstance(shell, str) and shell.startswith("/") and _SAFE_PATH.match(shell)):
        raise HostConfigError(f"host {name!r}: shell must be an absolute path, not {shell!r}")
    limits = HostLimits(max_nodes=_opt_int(name, spec, "max_nodes"), max_ppn=_opt_int(name, spec, "max_ppn"),
                        max_walltime_h=_opt_float(name, spec, "max_walltime_h"),
                        max_cputime_h=_opt_float(name, spec, "max_cputime_h"),
                        max_mem_gb=_opt_float(name, spec, "max_mem_gb"),
                        max_pmem_mb=_opt_float(name, spec, "max_pmem_mb"))
    return ProcessingHost(name=name, scheduler=scheduler, queue=spec.get("queue", ""),
                          account=spec.get("account", ""), shell=shell, limits=limits,
                          header_lines=_lines(name, spec, "header_lines"), pre_lines=_lines(name, spec, "pre_lines"),
                          sge_pe=spec.get("sge_pe", "smp"), remote=calc_remote_login(name, spec))


DEFAULT_HOSTS = (ProcessingHost(name="localhost", scheduler="slurm"),)


def calc_hosts_from_config(section) -> tuple[ProcessingHost, ...]:
    """Hosts from a `[hosts]` config section, in file order (the first is the default).

    Accepts `[hosts.<name>]` tables or a `[[hosts]]` array of tables with `name`.  An absent
    section gives a single local Slurm host.
    """
    if not section:
        return DEFAULT_HOSTS
    if isinstance(section, dict):
        items = list(section.items())
    elif isinstance(section, list):
        items = []
        for i, spec in enumerate(section):
            if not isinstance(spec, dict) or not spec.get("name"):
                raise HostConfigError(f"hosts entry {i + 1} needs a name")
            items.append((spec["name"], {k: v for k, v in spec.items() if k != "name"}))
    else:
        raise HostConfigError("[hosts] must be a table of hosts")
    hosts = []
    for name, spec in items:
        if not _SAFE_WORD.match(str(name)):
            raise HostConfigError(f"host name {name!r} may only hold letters, digits and _.+:@=,-")
        hosts.append(calc_host(str(name), spec))
    return tuple(hosts)


def calc_pick_host(hosts: tuple[ProcessingHost, ...], name: str | None) -> ProcessingHost:
    """The named host, or the first one (classic: the site's default processing host)."""
    if not hosts:
        raise HostConfigError("no processing hosts configured")
    if not name:
        return hosts[0]
    for host in hosts:
        if host.name == name:
            return host
    raise HostConfigError(f"no processing host named {name!r} (configured: {', '.join(h.name for h in hosts)})")


# ---------------------------------------------------------------- requests
def calc_checked_request(host: ProcessingHost, request: JobRequest) -> JobRequest:
    """The request with the host's defaults filled in; refused (HostLimitError) if over a limit.

    All problems are reported at once so a user fixes them in one go.
    """
    req = replace(request, queue=request.queue or host.queue, account=request.account or host.account)
    problems = []
    if req.nodes < 1 or req.ppn < 1:
        problems.append(f"nodes and ppn must be at least 1 (got nodes={req.nodes}, ppn={req.ppn})")
    for label, value in (("walltime", req.walltime_h), ("cputime", req.cputime_h), ("memory", req.mem_gb),
                         ("memory per process", req.pmem_mb)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            problems.append(f"{label} must be a positive number (got {value})")
    for label, value in (("job name", req.name), ("queue", req.queue), ("account", req.account)):
        if value and not _SAFE_WORD.match(value):
            problems.append(f"{label} {value!r} may only hold letters, digits and _.+:@=,-")
    if not req.name:
        problems.append("job name is empty")
    lim = host.limits
    checks = (("nodes", req.nodes, lim.max_nodes, ""), ("processors per node", req.ppn, lim.max_ppn, ""),
              ("walltime", req.walltime_h, lim.max_walltime_h, " h"), ("cputime", req.cputime_h, lim.max_cputime_h, " h"),
              ("memory", req.mem_gb, lim.max_mem_gb, " GB"), ("memory per process", req.pmem_mb, lim.max_pmem_mb, " MB"))
    for label, value, limit, unit in checks:
        if value is not None and limit is not None and value > limit:
            problems.append(f"{label} {value:g}{unit} is over the limit of {limit:g}{unit}")
    if host.scheduler == "slurm" and req.mem_gb is not None and req.pmem_mb is not None:
        problems.append("Slurm takes either memory (--mem) or memory per process (--mem-per-cpu), not both")
    if problems:
        raise HostLimitError(f"request refused by host {host.name!r} ({host.scheduler}): " + "; ".join(problems))
    return req


def format_hms(hours: float) -> str:
    """Hours as H:MM:SS (rounded up to the second: a limit must never shrink)."""
    total = int(math.ceil(hours * 3600 - 1e-9))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def format_hm(hours: float) -> str:
    """Hours as H:MM for LSF (rounded up to the minute)."""
    total = int(math.ceil(hours * 60 - 1e-9))
    return f"{total // 60}:{total % 60:02d}"


def _num(value: float) -> str:
    """Memory amounts: whole numbers as integers, else rounded up to an integer (schedulers want integers)."""
    return str(int(math.ceil(value - 1e-9)))


# ---------------------------------------------------------------- run directories and job files
def calc_checked_rundir(rundir: str, roots: list[str]) -> PurePosixPath:
    """An absolute run directory below one of the configured roots; refused otherwise.

    Pure: `..` is refused outright (never normalised away), so the caller's roots and the
    directory are compared as written; the caller resolves symlinks in the roots beforehand.
    """
    text = str(rundir)
    path = PurePosixPath(text)
    if not text or not path.is_absolute():
        raise RunDirError(f"run directory {text!r} must be an absolute path")
    if ".." in path.parts:
        raise RunDirError(f"run directory {text!r} contains '..'")
    if not _SAFE_PATH.match(text):
        raise RunDirError(f"run directory {text!r} may only hold letters, digits and _./+:@=,~- "
                          "(no spaces, quotes, newlines or shell characters)")
    for root in roots:
        root_path = PurePosixPath(str(root))
        if path == root_path or root_path in path.parents:
            return path
    raise RunDirError(f"run directory {text} is outside the configured run roots ({', '.join(map(str, roots))})")


def calc_checked_runname(runname: str) -> str:
    """A run name usable as a file name and scheduler job name."""
    if not runname or not _SAFE_WORD.match(runname) or runname.startswith("-"):
        raise RunDirError(f"run name {runname!r} may only hold letters, digits and _.+:@=,- (not starting with -)")
    return runname


@dataclass(frozen=True)
class JobFiles:
    """Where a job's bookkeeping files live (all inside the run directory)."""

    rundir: str
    runname: str

    def _p(self, suffix: str) -> str:
        return str(PurePosixPath(self.rundir) / f"{self.runname}{suffix}")

    @property
    def job_file(self) -> str:
        return self._p(".appionsub.job")

    @property
    def output(self) -> str:
        return self._p(".appionsub.log")

    @property
    def exitcode(self) -> str:
        return self._p(".exitcode")

    @property
    def phase(self) -> str:
        return self._p(".phase")

    @property
    def log(self) -> str:
        return self._p(".appion.log")

    @property
    def inputs(self) -> str:
        """Inputs outside the run directory a remote host needs copied with it (one local path per line)."""
        return self._p(".appionsub.inputs")

    @property
    def local_only(self) -> tuple[str, ...]:
        """Names in the run directory that are this machine's bookkeeping: never copied to a remote host nor back
        (the job log gets lines while the job runs there; a copy back would overwrite them)."""
        return (PurePosixPath(self.log).name, PurePosixPath(self.inputs).name, "run_commands.log")


# ---------------------------------------------------------------- remote hosts: local paths -> theirs
def calc_remote_path(host: ProcessingHost, path: str) -> str:
    """Where a local absolute path lives on the host (itself for local hosts and shared storage)."""
    if host.remote is None or not host.remote.copies:
        return path
    return str(PurePosixPath(host.remote.rundir_root) / str(path).lstrip("/"))


def calc_remote_files(host: ProcessingHost, files: JobFiles) -> JobFiles:
    return JobFiles(calc_remote_path(host, files.rundir), files.runname)


def _below(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# An argument naming a path after a prefix: --o=/x, key=/x (EMAN), 000001@/x (STAR-like names).
_PREFIXED_PATH = re.compile(r"^([^/=@]*[=@])(/.*)$", re.S)


def calc_remote_argv(host: ProcessingHost, argv: list[str], roots: tuple[str, ...]) -> list[str]:
    """argv with every local path below one of roots (whole argument, or after `=`/`@`) replaced by the host's."""
    def one(arg: str) -> str:
        if arg.startswith("/") and any(_below(arg, r) for r in roots):
            return calc_remote_path(host, arg)
        match = _PREFIXED_PATH.match(arg)
        if match and any(_below(match.group(2), r) for r in roots):
            return match.group(1) + calc_remote_path(host, match.group(2))
        return arg
    return [one(str(a)) for a in argv]


def calc_input_paths(commands: list[list[str]], rundir: str, roots: tuple[str, ...]) -> list[str]:
    """Absolute paths the commands name below the run roots but outside the run directory (pure: whether they
    exist is the caller's question), in first-seen order."""
    seen: dict[str, None] = {}
    for argv in commands:
        for arg in argv:
            match = _PREFIXED_PATH.match(arg)
            path = arg if arg.startswith("/") else (match.group(2) if match else "")
            if path and ".." not in PurePosixPath(path).parts and not _below(path, rundir) \
                    and any(_below(path, r) and path != r for r in roots):
                seen.setdefault(str(PurePosixPath(path)), None)
    return list(seen)


def calc_input_copy(path: str, is_dir: bool, rundir: str, roots: tuple[str, ...]) -> str:
    """What to copy for an input: a directory itself; a file's whole directory (a preparation's run directory:
    a stack's companion files, e.g. IMAGIC .hed/.img, travel with it) when that directory lies strictly below a
    run root and apart from the job's own run directory; else the file alone."""
    if is_dir:
        return path
    parent = str(PurePosixPath(path).parent)
    if any(_below(parent, r) and parent != r for r in roots) and not _below(rundir, parent) \
            and not _below(parent, rundir):
        return parent
    return path


def calc_command_line(argv: list[str]) -> str:
    """One shell line running argv exactly as given (every argument quoted on its own)."""
    if not argv:
        raise ValueError("empty command")
    return " ".join(shlex.quote(str(a)) for a in argv)


def calc_job_file_text(host: ProcessingHost, request: JobRequest, commands: list[list[str]], files: JobFiles,
                       jobtype: str = "generic", mapped_roots: tuple[str, ...] = ()) -> str:
    """The whole job file: shell line, directives, site lines, then the commands.

    The file reports on itself so the tracker needs no scheduler accounting: it writes its
    phase (PREPROCESSING, then RUNNING) to `<runname>.phase` and its exit status to
    `<runname>.exitcode` from an EXIT trap (atomically: temporary name, then mv); a scheduler's
    cancel signal (TERM) ends the script with status 143 so a cancelled job never reads as success.

    For a host that gets copies (remote_rundir) the file is written in the host's paths: its run
    directory, output file, and every command argument naming a path below the run directory or
    below mapped_roots (the run roots, where prepared inputs live).
    """
    where = f" at {host.remote.login}" if host.remote else ""
    if host.remote is not None and host.remote.copies:
        roots = (files.rundir, *mapped_roots)
        commands = [calc_remote_argv(host, c, roots) for c in commands]
        if request.output_path:
            request = replace(request, output_path=calc_remote_argv(host, [request.output_path], roots)[0])
        files = calc_remote_files(host, files)
    q = shlex.quote
    tmp = files.exitcode + ".tmp"
    trap_body = f'rc=$?; printf "%s\\n" "$rc" > {q(tmp)} && mv -f {q(tmp)} {q(files.exitcode)}'
    lines = [f"#!{host.shell}"]
    from appion.refine.schedulers import calc_header_lines

    lines += calc_header_lines(host, request)
    lines += ["", f"# appion job {files.runname} ({jobtype}) for processing host {host.name} ({host.scheduler}){where}",
              f"trap {q(trap_body)} EXIT",
              "trap 'exit 143' TERM; trap 'exit 130' INT; trap 'exit 129' HUP",  # cancelled: a non-zero status
              f"cd {q(files.rundir)} || exit 1",
              f"printf 'PREPROCESSING\\n' > {q(files.phase)}"]
    lines += list(host.pre_lines)
    lines += [f"printf 'RUNNING\\n' > {q(files.phase)}", "set -e"]
    lines += [calc_command_line(c) for c in commands]
    return "\n".join(lines) + "\n"
