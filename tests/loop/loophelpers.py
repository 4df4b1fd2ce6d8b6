"""Helpers for the loop tests (imported as tests.loop.loophelpers): run commands, query databases, wait."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

N_MOVIES = 12
SIZE = 512
FRAMES = 8
DOSE_PER_FRAME = 1.5


def copy_movies(sim_frames: Path, dest: Path, names: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(sim_frames.iterdir()):
        if names is None or any(p.name.startswith(n) for n in names):
            shutil.copy2(p, dest / p.name)
    return dest


def import_session(env: dict, name: str, frames_dir: Path) -> None:
    subprocess.run(["appion", "session", "import", "--name", name, "--frames-dir", str(frames_dir), "--apix", "1.0",
                    "--kv", "300", "--cs", "2.7", "--dose", str(DOSE_PER_FRAME * FRAMES)], env=env, check=True,
                   capture_output=True)


def truth_defocus_A(frames_dir: Path, filename: str) -> tuple[float, float]:
    truth = json.loads((frames_dir / f"{filename}.truth.json").read_text())
    return truth["defocus1_A"], truth["defocus2_A"]


class Db:
    """Plain SQL on a test home's databases (SQLite file or the MariaDB databases of its config, on whichever
    server the config names: the machine's 127.0.0.1:3306 or a private one)."""

    def __init__(self, home: Path):
        self.home = home
        cfg = (home / "config.toml")
        self.mysql = cfg.exists() and "mysql://" in cfg.read_text()
        if self.mysql:
            import tomllib
            from urllib.parse import urlsplit

            db = tomllib.loads(cfg.read_text())["database"]
            urls = {k: urlsplit(db[k]) for k in ("leginon", "appion")}
            self.names = {k: u.path.lstrip("/") for k, u in urls.items()}
            self.servers = {k: (u.hostname or "127.0.0.1", u.port or 3306) for k, u in urls.items()}

    def rows(self, sql: str, which: str = "appion") -> list[tuple]:
        if not self.mysql:
            con = sqlite3.connect(self.home / "appion.sqlite3", timeout=30)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()
        import MySQLdb

        host, port = self.servers[which]
        con = MySQLdb.connect(host=host, port=port, user="root", db=self.names[which])
        try:
            cur = con.cursor()
            cur.execute(sql.replace('"', "`"))
            return list(cur.fetchall())
        finally:
            con.close()

    def count(self, table: str, which: str = "appion") -> int:
        return self.rows(f'SELECT COUNT(*) FROM "{table}"', which)[0][0]


def start_loop(env: dict, args: list[str], log_path: Path) -> subprocess.Popen:
    """`appion loop ...` in the background, output to log_path."""
    out = open(log_path, "w")
    return subprocess.Popen(["appion", "loop", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"loop exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}:\n"
                         f"{log.read_text()[-3000:] if log else ''}")


def finish(proc: subprocess.Popen, timeout_s: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"loop did not finish within {timeout_s} s:\n{log.read_text()[-3000:]}")
