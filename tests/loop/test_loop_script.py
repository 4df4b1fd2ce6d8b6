"""`python loop.py` (the top-level module DEVELOPERS.md names) honours `--config` like `appion loop`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_loop_py_reads_config_before_touching_the_database(tmp_path):
    """The database named in --config is the one used; the default APPION_HOME is never touched."""
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    cfg = chosen / "config.toml"
    cfg.write_text(f'[database]\nleginon = "sqlite:///{chosen / "site.sqlite3"}"\n')
    default_home = tmp_path / "default-home"
    env = {"PATH": os.environ["PATH"], "APPION_HOME": str(default_home), "HOME": str(tmp_path)}
    init = subprocess.run(["appion", "--config", str(cfg), "db", "init"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stderr

    proc = subprocess.run([sys.executable, str(REPO / "loop.py"), "--config", str(cfg), "--session", "nosuch",
                           "--no-wait", "--dashboard-address", ":0"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "session 'nosuch' not found" in proc.stderr  # the schema exists: the config's database was opened
    assert "Traceback" not in proc.stderr
    assert not (default_home / "appion.sqlite3").exists()
