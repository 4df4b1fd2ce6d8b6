"""Processing hosts on another machine: config `login = "user@host"` (appion.refine.hosts.RemoteLogin).

Everything goes through the user's own ssh: their keys, agent and ~/.ssh/config (host keys checked
as that configuration says; nothing here turns checking off), always with BatchMode=yes so a missing
key fails at once instead of waiting for a password.  Site options (`ssh_options`) come after
appion's, and ssh keeps the first value it reads for an option, so they cannot undo BatchMode.

* Commands: `calc_ssh_argv` is one local argument list; the remote side receives a single command
  line in which every argument is quoted on its own (shlex.join), optionally after `cd DIR &&` and
  `env NAME=VALUE ...` (config `remote_env`, e.g. SLURM_CONF) — the remote login shell must be a
  POSIX shell (sh, bash, zsh, ...).
* Copies: rsync over ssh (`rsync -a -e "ssh ..."`), or scp when rsync is not installed here (rsync
  must then also be installed on the remote side).  The local side's bookkeeping files
  (JobFiles.local_only) are never copied in either direction.
* The job's own state files (phase, exit code) are read on the host with one ssh command.

Subprocesses are argument lists, never a local shell.  Failures raise RemoteError naming the login:
"login alice@gpu1 failed: Permission denied (publickey)".
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from appion.refine.hosts import ProcessingHost, RemoteLogin

SSH_OPTIONS = ("BatchMode=yes", "ConnectTimeout=20", "ServerAliveInterval=15", "ServerAliveCountMax=4",
               "LogLevel=ERROR")
COMMAND_TIMEOUT_S = 120
COPY_TIMEOUT_S = 3600
# Lines by which ssh itself (not the remote command) reports that it could not get there.
_SSH_FAILURES = ("Permission denied", "Host key verification failed", "Connection refused", "Connection timed out",
                 "Could not resolve hostname", "No route to host", "Connection closed", "Connection reset",
                 "REMOTE HOST IDENTIFICATION HAS CHANGED", "No matching host key", "Too many authentication failures")


class RemoteError(RuntimeError):
    """Reaching a remote processing host, or copying to or from it, failed (names the login)."""


def _remote(host: ProcessingHost) -> RemoteLogin:
    if host.remote is None:
        raise ValueError(f"host {host.name!r} has no login")
    return host.remote


# ---------------------------------------------------------------- argument lists (pure)
def _options(remote: RemoteLogin) -> list[str]:
    return [arg for option in (*SSH_OPTIONS, *remote.ssh_options) for arg in ("-o", option)]


def calc_ssh_base(remote: RemoteLogin) -> list[str]:
    """`ssh` with appion's and the site's options and the port (no login, no command)."""
    port = ["-p", str(remote.port)] if remote.port else []
    return ["ssh", *_options(remote), *port]


def calc_remote_command(remote: RemoteLogin, argv: list[str], cwd: str | None = None) -> str:
    """The one line the remote shell runs: [cd DIR &&] [env NAME=VALUE ...] argv, each argument quoted."""
    env = [f"{name}={value}" for name, value in remote.env]
    command = shlex.join(["env", *env, *argv] if env else list(argv))
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


def calc_ssh_argv(host: ProcessingHost, argv: list[str], cwd: str | None = None) -> list[str]:
    """The local argument list running argv on the host (in cwd there, when given)."""
    if not argv:
        raise ValueError("empty command")
    remote = _remote(host)
    return [*calc_ssh_base(remote), remote.login, "--", calc_remote_command(remote, [str(a) for a in argv], cwd)]


def calc_rsync_argv(remote: RemoteLogin, source: str, dest: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """rsync -a of directory source into directory dest (one of them `login:path`), names in exclude left out.

    The -e value is rsync's own little command line (it splits on spaces and knows quotes): shlex.join of a
    fixed list whose values hosts.calc_remote_login has checked (no quotes, backslashes or newlines)."""
    return ["rsync", "-a", "-e", shlex.join(calc_ssh_base(remote)), *(f"--exclude=/{name}" for name in exclude),
            "--", f"{source.rstrip('/')}/", f"{dest.rstrip('/')}/"]


def calc_rsync_file_argv(remote: RemoteLogin, source: str, dest: str) -> list[str]:
    """rsync -a of one file to a file path."""
    return ["rsync", "-a", "-e", shlex.join(calc_ssh_base(remote)), "--", source, dest]


def calc_scp_argv(remote: RemoteLogin, sources: list[str], dest: str) -> list[str]:
    """scp -r -p of sources into dest (scp takes the port as -P)."""
    port = ["-P", str(remote.port)] if remote.port else []
    return ["scp", "-r", "-p", *_options(remote), *port, "--", *sources, dest]


def calc_copy_tool() -> str:
    """rsync when installed here, else scp."""
    return "rsync" if shutil.which("rsync") else "scp"


def calc_failure(login: str, what: str, returncode: int, stderr: str) -> str:
    """The message for a failed ssh/rsync/scp run.  Exit 255 is ssh's own failure (rsync and scp pass it on):
    "login X failed: <ssh's complaint>"; otherwise the remote command failed and its last lines are shown."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if returncode == 255:
        line = next((x for x in lines if any(m in x for m in _SSH_FAILURES)), lines[0] if lines else "no message")
        text = re.sub(r"^(ssh|[^\s:]+@[^\s:]+): ", "", line).rstrip(".")
        return f"login {login} failed: {text}"
    detail = "; ".join(lines[-3:]) or "no message"
    return f"{what} on {login} failed (exit {returncode}): {detail}"


def parse_grep_files(paths: list[str], stdout: str) -> dict[str, str | None]:
    """`grep -sH '' -- PATHS` output → each path's text (None for a file that does not exist or is empty)."""
    out: dict[str, str | None] = {p: None for p in paths}
    for line in stdout.splitlines():
        for path in sorted(paths, key=len, reverse=True):  # longest first: one path may prefix another
            if line.startswith(path + ":"):
                out[path] = (out[path] or "") + line[len(path) + 1:] + "\n"
                break
    return out


# ---------------------------------------------------------------- running
def _run(argv: list[str], login: str, what: str, timeout_s: float,
         stdin_path: str | None = None) -> subprocess.CompletedProcess:
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        return subprocess.run(argv, stdin=stdin, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise RemoteError(f"{what} on {login}: {argv[0]!r} is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{what} on {login} did not finish in {timeout_s:.0f} s") from None
    finally:
        if stdin_path:
            stdin.close()


def run_ssh(host: ProcessingHost, argv: list[str], cwd: str | None = None, stdin_path: str | None = None,
            timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    """argv run on the host; the remote command's own exit status is returned, ssh's failures (255) raise."""
    remote = _remote(host)
    result = _run(calc_ssh_argv(host, argv, cwd), remote.login, argv[0], timeout_s, stdin_path)
    if result.returncode == 255:
        raise RemoteError(calc_failure(remote.login, argv[0], 255, result.stderr))
    return result


def _checked_ssh(host: ProcessingHost, argv: list[str]) -> None:
    result = run_ssh(host, argv)
    if result.returncode != 0:
        raise RemoteError(calc_failure(_remote(host).login, shlex.join(argv), result.returncode, result.stderr))


def make_remote_dir(host: ProcessingHost, path: str) -> None:
    _checked_ssh(host, ["mkdir", "-p", "--", path])


def remove_remote_files(host: ProcessingHost, paths: list[str]) -> None:
    if paths:
        _checked_ssh(host, ["rm", "-f", "--", *paths])


def read_remote_files(host: ProcessingHost, paths: list[str]) -> dict[str, str | None]:
    """Small text files on the host, in one connection; None for one that does not exist (or is empty)."""
    result = run_ssh(host, ["grep", "-sH", "", "--", *paths])
    if result.returncode not in (0, 1, 2):  # 1: nothing printed, 2: some file missing
        raise RemoteError(calc_failure(_remote(host).login, "grep", result.returncode, result.stderr))
    return parse_grep_files(paths, result.stdout)


def _copy(argv: list[str], remote: RemoteLogin, what: str) -> None:
    result = _run(argv, remote.login, what, COPY_TIMEOUT_S)
    if result.returncode != 0:
        raise RemoteError(calc_failure(remote.login, what, result.returncode, result.stderr))


def copy_to(host: ProcessingHost, local_dir: str, remote_dir: str, exclude: tuple[str, ...] = (),
            tool: str | None = None) -> None:
    """The contents of local_dir into remote_dir on the host (created with its parents), except exclude."""
    remote = _remote(host)
    tool = tool or calc_copy_tool()
    make_remote_dir(host, remote_dir)
    what = f"copying {local_dir} to {remote_dir}"
    if tool == "rsync":
        _copy(calc_rsync_argv(remote, local_dir, f"{remote.login}:{remote_dir}", exclude), remote, what)
        return
    entries = sorted(str(Path(local_dir) / n) for n in os.listdir(local_dir) if n not in exclude)
    if entries:
        _copy(calc_scp_argv(remote, entries, f"{remote.login}:{remote_dir}/"), remote, what)


def copy_file_to(host: ProcessingHost, local_path: str, remote_path: str, tool: str | None = None) -> None:
    """One file to remote_path on the host (its directory created)."""
    remote = _remote(host)
    tool = tool or calc_copy_tool()
    make_remote_dir(host, str(Path(remote_path).parent))
    what = f"copying {local_path} to {remote_path}"
    if tool == "rsync":
        _copy(calc_rsync_file_argv(remote, local_path, f"{remote.login}:{remote_path}"), remote, what)
    else:
        _copy(calc_scp_argv(remote, [local_path], f"{remote.login}:{remote_path}"), remote, what)


def copy_back(host: ProcessingHost, remote_dir: str, local_dir: str, exclude: tuple[str, ...] = (),
              tool: str | None = None) -> None:
    """The contents of remote_dir on the host into local_dir (which must exist), except exclude.

    scp cannot leave names out, so it copies into a temporary directory beside local_dir first and
    moves everything but the excluded names into place."""
    remote = _remote(host)
    tool = tool or calc_copy_tool()
    what = f"copying {remote_dir} back to {local_dir}"
    if tool == "rsync":
        _copy(calc_rsync_argv(remote, f"{remote.login}:{remote_dir}", local_dir, exclude), remote, what)
        return
    staging = Path(tempfile.mkdtemp(prefix=".appion-copy-", dir=Path(local_dir).parent))
    try:
        _copy(calc_scp_argv(remote, [f"{remote.login}:{remote_dir}"], f"{staging}/"), remote, what)
        copied = staging / Path(remote_dir).name
        for entry in sorted(copied.iterdir()):
            if entry.name in exclude:
                continue
            target = Path(local_dir) / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, dirs_exist_ok=True)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
