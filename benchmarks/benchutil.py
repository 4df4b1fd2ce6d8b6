"""Helpers the benchmarks share (imported as a sibling module: run the benchmarks as `python benchmarks/X.py`)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path


def read_rows(db_path: Path, sql: str) -> list:
    """Rows of `sql` on the embedded SQLite database, [] while the file or its tables do not exist yet."""
    try:
        con = sqlite3.connect(db_path, timeout=30)
    except sqlite3.OperationalError:
        return []
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def stop_processes(procs, timeout_s: float = 120.0) -> None:
    """SIGTERM each process (a loop, an importer), then wait; a process group still there after timeout_s is killed."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
