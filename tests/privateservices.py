"""Private MariaDB and Slurm servers for the tests, so no test ever touches a service it did not start.

Each server lives in its own directory (data, sockets, pid files, logs, configuration), listens on its own free
ports on 127.0.0.1 and is stopped by the PID in its own pid file, after checking that the process is the one started
here (its command line names the private directory).  Nothing is written under /etc and nothing is matched by
program name.  Facts: shared/reference/services.md.

  PrivateMariaDB(dir)   mariadbd --no-defaults with its own datadir, port, socket and pid file; stop()/start() again
                        for outage tests.
  PrivateSlurm(dir)     its own munged (key, socket, pid) and a single-node slurmctld + slurmd reading dir/slurm.conf;
                        clients reach it with SLURM_CONF=dir/slurm.conf in their environment.
  PrivateSshd(dir)      sshd -D -f dir/sshd_config on 127.0.0.1:port with its own host key, pid file and authorized
                        keys (a client key made here; key logins only); the client options name dir/known_hosts.

A reaper process (started with each server, `reap` below) stops the server by its pid files when the process that
started it dies without stopping it (a test run killed at its timeout), so a private server never outlives its run.

Command line (used by .ci/slurm-up):
  python3 tests/privateservices.py slurm-up DIR      start, print SLURM_CONF=DIR/slurm.conf
  python3 tests/privateservices.py slurm-down DIR    stop the daemons whose pid files are in DIR
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class ServiceError(RuntimeError):
    """A private server could not be started (message carries the end of its log)."""


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice of an ephemeral port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def pid_from_file(pid_file: Path, marker: str) -> int | None:
    """The PID in pid_file if that process runs and its command line contains marker (our private path)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or not _alive(pid) or marker not in _cmdline(pid):
        return None
    return pid


def stop_by_pid_file(pid_file: Path, marker: str, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process named by pid_file (only if its command line contains marker), wait for it to end, SIGKILL
    after timeout_s.  Returns whether a process was stopped."""
    pid = pid_from_file(pid_file, marker)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid) and marker in _cmdline(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    return True


def _wait(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _start_reaper(kind: str, directory: Path) -> subprocess.Popen:
    """A watcher that stops the server in directory once this process has gone (it exits with us otherwise)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "reap", str(os.getpid()), kind,
                             str(directory)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stop_reaper(reaper: subprocess.Popen | None) -> None:
    if reaper is not None and reaper.poll() is None:
        reaper.terminate()
        try:
            reaper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.wait()


def _is_root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------------------------------------------- MariaDB
class PrivateMariaDB:
    """A MariaDB server of our own: root with an empty password on 127.0.0.1:port, data under directory/data."""

    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.pid_file = self.dir / "mysqld.pid"
        self.log = self.dir / "mysqld.log"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None

    @staticmethod
    def missing_programs() -> list[str]:
        return [p for p in ("mariadbd", "mariadb-install-db", "mysqladmin", "mysql") if find_program(p) is None]

    def url(self, database: str) -> str:
        return f"mysql://root@{self.host}:{self.port}/{database}"

    def _client(self, program: str) -> list[str]:
        return [find_program(program) or program, "--no-defaults", "-uroot", f"-h{self.host}", f"-P{self.port}"]

    def ping(self) -> bool:
        return subprocess.run([*self._client("mysqladmin"), "--connect-timeout=2", "ping"],
                              capture_output=True).returncode == 0

    def execute(self, sql: str, database: str | None = None) -> str:
        cmd = [*self._client("mysql"), "--batch", "--skip-column-names", "-e", sql]
        if database:
            cmd.append(database)
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    @property
    def pid(self) -> int | None:
        return pid_from_file(self.pid_file, str(self.datadir))

    def _server_env(self) -> dict[str, str]:
        """The server's environment: its temporary files go to its own directory (writable by user mysql), not to
        the caller's TMPDIR, which may be a directory only the caller can write (CI's per-run directory)."""
        return {**os.environ, "TMPDIR": str(self.dir)}

    def _install(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [find_program("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]
        if _is_root():
            os.chown(self.dir, pwd.getpwnam("mysql").pw_uid, -1)  # mariadbd runs as mysql and writes here
            args.append("--user=mysql")
        result = subprocess.run(args, capture_output=True, text=True, env=self._server_env())
        if result.returncode != 0:
            raise ServiceError(f"mariadb-install-db failed in {self.datadir}:\n{result.stdout[-1500:]}"
                               f"{result.stderr[-1500:]}")

    def start(self, timeout_s: float = 60.0) -> "PrivateMariaDB":
        """Create the datadir on first start, start mariadbd and wait until it answers."""
        if self.pid is not None:
            raise ServiceError(f"a private MariaDB already runs on {self.datadir} (pid {self.pid})")
        if not (self.datadir / "mysql").is_dir():
            self._install()
        args = [find_program("mariadbd"), "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                f"--socket={self.socket}", f"--pid-file={self.pid_file}", f"--bind-address={self.host}",
                f"--log-error={self.log}", f"--tmpdir={self.dir}", "--skip-log-bin",
                "--innodb-buffer-pool-size=64M"]
        if _is_root():
            args.insert(2, "--user=mysql")
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True, env=self._server_env())
        if self._reaper is None or self._reaper.poll() is not None:
            self._reaper = _start_reaper("mariadb", self.dir)
        up = _wait(lambda: self._proc.poll() is not None or (self.pid is not None and self.ping()), timeout_s)
        if not up or self._proc.poll() is not None:
            self.stop()
            raise ServiceError(f"private MariaDB on port {self.port} did not start:\n{_tail(self.log)}")
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop this server (SIGTERM to the PID in its pid file: a clean shutdown) and wait until it has exited."""
        stop_by_pid_file(self.pid_file, str(self.datadir), timeout_s)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # ours: the Popen we started
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the server and its reaper; the directory stays for the caller to remove."""
        self.stop()
        _stop_reaper(self._reaper)
        self._reaper = None


# ---------------------------------------------------------------------------------------------------- Slurm
SLURM_CONF_TEMPLATE = """\
# A private single-node Slurm for the tests (tests/privateservices.py); every daemon and client uses this file.
ClusterName=appiontest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/d
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
NodeName=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class PrivateSlurm:
    """A single-node Slurm of our own (partition `debug`, node `localhost`) with its own munged."""

    PROGRAMS = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.conf = self.dir / "slurm.conf"
        self.munge_dir = self.dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self._reaper: subprocess.Popen | None = None

    @classmethod
    def missing_programs(cls) -> list[str]:
        return [p for p in cls.PROGRAMS if find_program(p) is None]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this Slurm."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    # munge ------------------------------------------------------------------------------------------------
    def _munge_works(self) -> bool:
        munge = subprocess.run([find_program("munge"), "-S", str(self.munge_socket), "-n"], capture_output=True)
        if munge.returncode != 0:
            return False
        return subprocess.run([find_program("unmunge"), "-S", str(self.munge_socket)], input=munge.stdout,
                              capture_output=True).returncode == 0

    def _start_munge(self) -> None:
        self.munge_dir.mkdir(exist_ok=True)
        self.munge_dir.chmod(0o755)  # munged wants its socket directory searchable by all
        key = self.munge_dir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(1024))
        args = [find_program("munged"), f"--key-file={key}", f"--socket={self.munge_socket}",
                f"--pid-file={self.munge_dir / 'munged.pid'}", f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'seed'}"]
        if _is_root():
            munge_user = pwd.getpwnam("munge")
            for parent in self.dir.parents:
                st = parent.stat()
                if not st.st_mode & 0o001 and st.st_uid != munge_user.pw_uid:
                    raise ServiceError(f"munged (user munge) cannot reach {self.munge_dir}: {parent} is not "
                                       "searchable by others; put the private Slurm's directory elsewhere")
            for path in (self.munge_dir, key):
                os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
            args = ["runuser", "-u", "munge", "--", *args]
        result = subprocess.run(args, capture_output=True, text=True)  # munged daemonizes
        if result.returncode != 0 or not _wait(self._munge_works, 10, 0.1):
            raise ServiceError(f"private munged did not start: {result.stderr.strip()}\n"
                               f"{_tail(self.munge_dir / 'munged.log')}")

    # slurm ------------------------------------------------------------------------------------------------
    def _memory_mib(self) -> int:
        total_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal:"))
        memory = total_kib // 1024 * 3 // 4
        # RealMemory above what slurmd detects drains the node; `slurmd -C` only reads the hardware.
        detected = subprocess.run([find_program("slurmd"), "-C"], capture_output=True, text=True,
                                  env={**os.environ, "SLURM_CONF": str(self.conf)})
        for word in detected.stdout.split():
            if word.startswith("RealMemory="):
                memory = min(memory, int(word.split("=", 1)[1]))
        return memory

    def write_conf(self) -> None:
        for sub in ("ctld", "d", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        user = "root" if _is_root() else pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(SLURM_CONF_TEMPLATE.format(
            ctld_port=free_port(), slurmd_port=free_port(), user=user, munge_socket=self.munge_socket, dir=self.dir,
            cpus=os.cpu_count() or 1, memory=self._memory_mib()))

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", "localhost", "-o", "%t").stdout.strip()

    def _controller_up(self) -> bool:
        return "UP" in self.run("scontrol", "ping").stdout

    def _logs(self) -> str:
        return (f"slurmctld.log:\n{_tail(self.dir / 'log' / 'slurmctld.log')}\n"
                f"slurmd.log:\n{_tail(self.dir / 'log' / 'slurmd.log')}")

    def start(self, timeout_s: float = 60.0, reaper: bool = True) -> "PrivateSlurm":
        """munged, slurmctld, slurmd; returns once the node is idle."""
        if pid_from_file(self.dir / "slurmctld.pid", str(self.conf)) is not None:
            raise ServiceError(f"a private Slurm already runs from {self.conf}")
        self.dir.mkdir(parents=True, exist_ok=True)
        if _is_root():
            self.dir.chmod(0o755)  # munged (user munge) reaches its directory through this one
        if reaper:
            self._reaper = _start_reaper("slurm", self.dir)
        try:
            self._start_munge()
            self.write_conf()
            result = subprocess.run([find_program("slurmctld"), "-c", "-f", str(self.conf)], capture_output=True,
                                    text=True, env=self.env)
            if result.returncode != 0 or not _wait(self._controller_up, timeout_s):
                raise ServiceError(f"private slurmctld did not answer: {result.stderr.strip()}\n{self._logs()}")
            result = subprocess.run([find_program("slurmd"), "-f", str(self.conf)], capture_output=True, text=True,
                                    env=self.env)
            if result.returncode != 0:
                raise ServiceError(f"private slurmd did not start: {result.stderr.strip()}\n{self._logs()}")

            def ready() -> bool:
                state = self.node_state()
                if state.startswith(("down", "drain")):
                    self.run("scontrol", "update", "nodename=localhost", "state=resume")
                return state.startswith(("idle", "mix", "alloc"))

            if not _wait(ready, timeout_s):
                raise ServiceError(f"private Slurm node is {self.node_state()!r}, not idle\n{self._logs()}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel what still runs, then stop slurmd, slurmctld and munged by their pid files."""
        if pid_from_file(self.dir / "slurmctld.pid", str(self.conf)) is not None:
            try:
                self.run("scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name, timeout=20)
                # Let slurmstepd end the jobs and report while slurmd and slurmctld still run.
                _wait(lambda: not self.run("squeue", "-h", "-o", "%i", timeout=20).stdout.strip(), 15, 0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        stop_by_pid_file(self.dir / "slurmd.pid", str(self.conf))
        stop_by_pid_file(self.dir / "slurmctld.pid", str(self.conf))
        stop_by_pid_file(self.munge_dir / "munged.pid", str(self.munge_dir))
        _stop_reaper(self._reaper)
        self._reaper = None


# ---------------------------------------------------------------------------------------------------- sshd
SSHD_CONFIG_TEMPLATE = """\
# A private sshd for the tests (tests/privateservices.py): loopback only, key logins only, own files.
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp internal-sftp
{set_env}
"""


class PrivateSshd:
    """An sshd of our own on 127.0.0.1:port, logging in the current user with a key made here.

    As root, sshd insists on its privilege-separation directory /run/sshd; when the machine has none it runs in a
    private mount namespace (unshare) with a tmpfs on /run holding it, so nothing of the machine is created.
    `set_env` (sshd's SetEnv) gives every session fixed variables, e.g. SLURM_CONF=/dev/null so a remote command
    that was not given the private Slurm's configuration fails instead of finding the machine's."""

    PROGRAMS = ("sshd", "ssh", "ssh-keygen")

    def __init__(self, directory: Path, set_env: dict[str, str] | None = None):
        self.dir = Path(directory)
        self.config = self.dir / "sshd_config"
        self.pid_file = self.dir / "sshd.pid"
        self.log = self.dir / "sshd.log"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.port = free_port()
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.set_env = dict(set_env or {})
        self._proc: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None

    @classmethod
    def missing_programs(cls) -> list[str]:
        return [p for p in cls.PROGRAMS if find_program(p) is None]

    @property
    def login(self) -> str:
        return f"{self.user}@127.0.0.1"

    @property
    def client_options(self) -> list[str]:
        """ssh -o options for a client of this server: its key, and host keys checked against its known_hosts."""
        return [f"IdentityFile={self.client_key}", "IdentitiesOnly=yes", f"UserKnownHostsFile={self.known_hosts}",
                "StrictHostKeyChecking=yes"]

    def make_key(self, path: Path) -> Path:
        subprocess.run([find_program("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "appion-test", "-f",
                        str(path)], check=True, capture_output=True)
        return path

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        host_key = self.make_key(self.dir / "ssh_host_ed25519_key")
        self.make_key(self.client_key)
        (self.dir / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {Path(f'{host_key}.pub').read_text()}")
        set_env = f"SetEnv {' '.join(f'{k}={v}' for k, v in self.set_env.items())}" if self.set_env else ""
        self.config.write_text(SSHD_CONFIG_TEMPLATE.format(port=self.port, dir=self.dir, set_env=set_env))

    def _argv(self, *flags: str) -> list[str]:
        sshd = [find_program("sshd"), *flags, "-f", str(self.config)]
        if not _is_root() or os.path.isdir("/run/sshd"):
            return sshd
        # exec keeps the pid: the Popen's pid, the pid file's and sshd's are one process
        script = 'mount -t tmpfs -o mode=0755 appion-test-run /run && mkdir -m 0755 /run/sshd && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh", *sshd]

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                return conn.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def start(self, timeout_s: float = 30.0) -> "PrivateSshd":
        self._write_files()
        check = subprocess.run(self._argv("-t"), capture_output=True, text=True)
        if check.returncode != 0:
            raise ServiceError(f"private sshd configuration refused: {check.stderr.strip()}")
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(self._argv("-D", "-e"), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True)
        self._reaper = _start_reaper("sshd", self.dir)
        up = _wait(lambda: self._proc.poll() is not None or (self.pid is not None and self._answers()), timeout_s)
        if not up or self._proc.poll() is not None:
            self.close()
            raise ServiceError(f"private sshd on port {self.port} did not start:\n{_tail(self.log)}")
        return self

    @property
    def pid(self) -> int | None:
        return pid_from_file(self.pid_file, str(self.config))

    def close(self) -> None:
        """Stop sshd by its pid file (and the process we started), then its reaper; the directory stays."""
        stop_by_pid_file(self.pid_file, str(self.config))
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()  # ours: the Popen we started (sshd itself, or unshare before its exec)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        _stop_reaper(self._reaper)
        self._reaper = None


# ---------------------------------------------------------------------------------------------------- CLI
def _reap(owner_pid: int, kind: str, directory: Path) -> None:
    """Wait for owner_pid to end, then stop the private server in directory (if it still runs)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the owner stopped the server itself
    while _alive(owner_pid):
        time.sleep(1.0)
    if kind == "mariadb":
        stop_by_pid_file(directory / "mysqld.pid", str(directory / "data"))
    elif kind == "sshd":
        stop_by_pid_file(directory / "sshd.pid", str(directory / "sshd_config"))
    else:
        PrivateSlurm(directory).stop()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "slurm-up":
        PrivateSlurm(Path(argv[1]).resolve()).start(reaper=False)
        print(f"SLURM_CONF={Path(argv[1]).resolve() / 'slurm.conf'}")
        return 0
    if len(argv) == 2 and argv[0] == "slurm-down":
        PrivateSlurm(Path(argv[1]).resolve()).stop()
        return 0
    if len(argv) == 4 and argv[0] == "reap":
        _reap(int(argv[1]), argv[2], Path(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
