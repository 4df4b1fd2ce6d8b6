"""The fault table: what the loop imports, stores once, duplicates, loses and fails (with reasons) under faults.

    python benchmarks/faults.py [--n 4] [--only kill,worker,...] [--keep]

Each fault runs on a fresh simulated session of --n small movies (512² × 8 frames, TIFF) with its own
APPION_HOME (SQLite; the outages use a private MariaDB server started here, never the machine's):

  kill       kill -9 of the loop (its process group) after two CTF results, then a restart
  worker     kill -9 of a busy Dask worker process mid-task
  outage     the private MariaDB stopped for 20 s mid-run, then started again
  sigterm    the private MariaDB stopped, then one SIGTERM: the loop must stop within --grace; restart after
  badinput   one truncated movie, one with NaN frames (MRC float), one whose gain file is replaced by a wrong-sized
             one after import; the rest must be stored, the bad ones fail once with a reason naming the file
  twoloops   a second loop on the same run while the first runs (must be refused), the first finishes
  diskfull   the run directories on a full disk: start refused with one line (run E); then a disk with room for run
             files but not for images (failures retried, then given up with the reason); then the disk freed and
             `appion loop --retry-failed`

How the full disk is made without touching the machine: a tiny tmpfs is mounted over the session's appion_base in a
private mount namespace of the loop process (`unshare --mount`; needs root or unprivileged user namespaces).  A
`ulimit -f` limit was not used: it gives EFBIG (or SIGXFSZ), not the ENOSPC a full disk gives.

Columns: imported (exposures registered), stored once (one motion + one CTF result), duplicated (more than one of
either), lost (neither stored nor recorded as failed), failed (recorded permanent failures, with their reasons).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.loop.loophelpers import Db  # noqa: E402 (plain SQL on a home's databases, SQLite or MariaDB)

PY = [sys.executable, "-m", "appion.cli"]
FAST = ["--poll", "0.3", "--dashboard-address", ":0"]
FAULTS = ("kill", "worker", "outage", "sigterm", "badinput", "twoloops", "diskfull")


def env_for(home: Path) -> dict:
    env = {**os.environ, "APPION_HOME": str(home), "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    env.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "appion-numba-cache"))
    return env


def run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the loop exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9


class Session:
    """A fresh home with a session of copies of the simulated movies."""

    def __init__(self, root: Path, name: str, sim: Path, n: int, mariadb=None):
        self.dir = root / name
        self.home = self.dir / "home"
        self.frames = self.dir / "frames"
        self.name = name
        self.home.mkdir(parents=True)
        self.frames.mkdir()
        if mariadb is not None:
            for part in ("leg", "proj", "ap"):
                mariadb.execute(f"DROP DATABASE IF EXISTS `{name}_{part}`; CREATE DATABASE `{name}_{part}`")
            (self.home / "config.toml").write_text("[database]\n" + "".join(
                f'{k} = "{mariadb.url(f"{name}_{part}")}"\n'
                for k, part in (("leginon", "leg"), ("project", "proj"), ("appion", "ap"))))
        self.env = env_for(self.home)
        run([*PY, "db", "init"], self.env).check_returncode()
        for p in sorted(sim.glob("*.frames.tif"))[:n]:
            shutil.copy2(p, self.frames / p.name)
        self.db = Db(self.home)

    def import_(self, *extra: str) -> subprocess.CompletedProcess:
        return run([*PY, "session", "import", "--name", self.name, "--frames-dir", str(self.frames), "--apix", "1.0",
                    "--kv", "300", "--cs", "2.7", "--dose", "12", *extra], self.env)

    def loop_cmd(self, *extra: str) -> list[str]:
        return [*PY, "loop", "--session", self.name, *FAST, *extra]

    def ctf_count(self) -> int:
        return self.db.count("ApCtfData")

    def table(self) -> dict:
        """imported / stored once / duplicated / lost / failed (with reasons) from the database rows."""
        names = dict(self.db.rows("SELECT DEF_id, filename FROM AcquisitionImageData", "leginon"))
        movies = {i: f for i, f in names.items() if "-" not in f}
        pairs: dict[str, int] = {}
        for source, count in self.db.rows('SELECT "REF|leginondata|AcquisitionImageData|source", COUNT(*) '
                                          'FROM ApDDAlignImagePairData GROUP BY '
                                          '"REF|leginondata|AcquisitionImageData|source"'):
            pairs[names.get(source, "?")] = count
        ctf: dict[str, int] = {}
        for (image,) in self.db.rows('SELECT "REF|leginondata|AcquisitionImageData|image" FROM ApCtfData'):
            base = names.get(image, "?").split("-")[0]
            ctf[base] = ctf.get(base, 0) + 1
        failed = {}
        for image, step, error, attempts in self.db.rows(
                "SELECT \"REF|leginondata|AcquisitionImageData|image\", step, last_error, attempts "
                "FROM ApLoopExposureData WHERE status = 'failed' ORDER BY DEF_id"):
            name = names.get(image, "?")
            if not (error or "").startswith("not run:"):
                failed[name] = f"{step} after {attempts} attempt(s): {error}"
        once = [f for f in movies.values() if pairs.get(f) == 1 and ctf.get(f) == 1]
        duplicated = [f for f in movies.values() if pairs.get(f, 0) > 1 or ctf.get(f, 0) > 1]
        lost = [f for f in movies.values() if f not in once and f not in duplicated and f not in failed]
        return {"imported": len(movies), "once": len(once), "duplicated": len(duplicated), "lost": len(lost),
                "failed": failed}


# ---------------------------------------------------------------------------------------------------- faults


def fault_kill(s: Session) -> list[str]:
    s.import_().check_returncode()
    proc = start(s.loop_cmd(), s.env, s.dir / "loop1.log")
    wait_until(lambda: s.ctf_count() >= 2, 300, "two CTF results", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status = run([*PY, "status", s.name], s.env).stdout
    killed = next((line for line in status.splitlines() if line.startswith("run ")), "")
    code = finish(start(s.loop_cmd("--no-wait", "--idle", "0"), s.env, s.dir / "loop2.log"), 600)
    text = (s.dir / "loop2.log").read_text()
    return [f"status right after kill -9: {killed}",
            f"restart exit {code}; took over: {'taking it over' in text}; "
            f"temporaries cleaned: {text.count('leftover temporary')} message(s)"]


def fault_worker(s: Session) -> list[str]:
    import psutil

    s.import_().check_returncode()
    proc = start(s.loop_cmd("--no-wait", "--idle", "0"), s.env, s.dir / "loop.log")
    wait_until(lambda: s.ctf_count() >= 1, 300, "a first CTF result", proc)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        busy = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "multiprocessing" in " ".join(p.cmdline()) and p.cpu_percent(interval=0.1) > 20]
        victim = busy[0] if busy else None
    if victim is not None:
        victim.kill()
    code = finish(proc, 600)
    return [f"killed worker pid {victim.pid if victim else 'none found (loop already done)'}; loop exit {code}"]


def fault_outage(s: Session, mariadb) -> list[str]:
    s.import_().check_returncode()
    proc = start(s.loop_cmd("--no-wait", "--idle", "0"), s.env, s.dir / "loop.log")
    try:
        wait_until(lambda: s.ctf_count() >= 1, 300, "a first CTF result", proc)
        mariadb.stop()
        time.sleep(20)
    finally:
        if not mariadb.ping():
            mariadb.start()
    code = finish(proc, 600)
    text = (s.dir / "loop.log").read_text()
    return [f"20 s outage; loop exit {code}; outage logged: {'database unavailable' in text}, "
            f"recovered: {'database reachable again' in text}"]


def fault_sigterm(s: Session, mariadb) -> list[str]:
    s.import_().check_returncode()
    grace_s = 5.0
    log = s.dir / "loop1.log"
    proc = start(s.loop_cmd("--grace", str(grace_s)), s.env, log)
    try:
        wait_until(lambda: s.ctf_count() >= 1, 300, "a first CTF result", proc)
        mariadb.stop()
        wait_until(lambda: "database unavailable" in log.read_text(), 60, "the outage to be noticed", proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = finish(proc, 300)
        stop_s = time.monotonic() - t0
    finally:
        if not mariadb.ping():
            mariadb.start()
    code2 = finish(start(s.loop_cmd("--no-wait", "--idle", "0"), s.env, s.dir / "loop2.log"), 600)
    return [f"SIGTERM during the outage: exit {code} after {stop_s:.1f} s (--grace {grace_s:.0f}); traceback: "
            f"{'Traceback' in log.read_text()}; restart exit {code2}"]


def make_nan_movie(tiff: Path) -> Path:
    """An MRC float32 copy of a TIFF movie with NaN in frame 3 (the TIFF is removed)."""
    import mrcfile
    import numpy as np
    import tifffile

    with tifffile.TiffFile(tiff) as tif:
        frames = np.stack([page.asarray() for page in tif.pages]).astype(np.float32)
    frames[3, 10:20, 10:20] = np.nan
    out = tiff.with_name(tiff.name.replace(".frames.tif", ".frames.mrc"))
    with mrcfile.new(out) as mrc, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Data array contains NaN values": that is the point
        mrc.set_data(frames)
        mrc.voxel_size = 1.0
    tiff.unlink()
    return out


def fault_badinput(s: Session) -> list[str]:
    import mrcfile
    import numpy as np

    movies = sorted(s.frames.glob("*.frames.tif"))
    nan_movie = make_nan_movie(movies[1])
    gain = s.dir / "gain.mrc"
    with mrcfile.new(gain) as mrc:
        mrc.set_data(np.ones((512, 512), np.float32))
    imported = s.import_("--gain", str(gain))
    notes = [f"import exit {imported.returncode}: {imported.stdout.strip().splitlines()[-1:]}"]
    truncated = movies[0]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # cut after registration (a failed transfer)
    norm = s.db.rows('SELECT "MRC|image" FROM NormImageData', "leginon")
    image_dir = s.db.rows("SELECT \"image path\" FROM SessionData", "leginon")[0][0]
    wrong = None
    if norm and movies[2:]:
        # the registered gain replaced by a 256² one after import: every exposure that uses it is bad input now;
        # only the third movie keeps using it (the others' gain rows are pointed away from it)
        wrong = Path(image_dir) / norm[0][0]
        with mrcfile.new(wrong, overwrite=True) as mrc:
            mrc.set_data(np.ones((256, 256), np.float32))
        keep = [m.name.split(".")[0] for m in movies if m != movies[2]] + [nan_movie.name.split(".")[0]]
        names = ", ".join(f"'{n}'" for n in keep)
        if s.db.mysql:
            raise RuntimeError("badinput runs on SQLite")
        import sqlite3

        con = sqlite3.connect(s.home / "appion.sqlite3")
        con.execute(f'UPDATE AcquisitionImageData SET "REF|NormImageData|norm" = NULL WHERE filename IN ({names})')
        con.commit()
        con.close()
    code = finish(start(s.loop_cmd("--no-wait", "--idle", "0"), s.env, s.dir / "loop.log"), 600)
    notes.append(f"truncated {truncated.name}, NaN frames {nan_movie.name}, wrong gain for "
                 f"{movies[2].name if wrong else '(no gain registered)'}; loop exit {code}")
    return notes


def fault_twoloops(s: Session) -> list[str]:
    s.import_().check_returncode()
    first = start(s.loop_cmd("--runname", "r1", "--no-wait", "--idle", "2"), s.env, s.dir / "first.log")
    wait_until(lambda: "appion loop:" in (s.dir / "first.log").read_text(), 300, "the first loop to start", first)
    second = run(s.loop_cmd("--runname", "r1", "--no-wait", "--idle", "0"), s.env)
    code = finish(first, 600)
    status = run([*PY, "status", s.name], s.env).stdout
    state = next((line for line in status.splitlines() if line.startswith("run ")), "")
    return [f"second loop exit {second.returncode}: {second.stderr.strip().splitlines()[-1:]}",
            f"first loop exit {code}; status afterwards: {state}"]


def on_small_disk(size: str, directory: Path, fill: bool, command: list[str]) -> list[str]:
    script = 'mount -t tmpfs -o size="$1" appion-faults-full "$2" || exit 97; '
    script += 'head -c 1G /dev/zero > "$2/filler" 2>/dev/null; ' if fill else ""
    script += 'shift 2; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", size, str(directory),
            *command]


def fault_diskfull(s: Session) -> list[str]:
    s.import_().check_returncode()
    base = s.home / "runs"
    base.mkdir(exist_ok=True)
    probe = run(on_small_disk("4k", base, False, ["true"]), s.env)
    if probe.returncode != 0:
        return [f"skipped: cannot mount a tmpfs in a private mount namespace here ({probe.stderr.strip()[:200]})"]
    full = run(on_small_disk("64k", base, True, s.loop_cmd("--no-wait", "--idle", "0")), s.env)
    runs = s.db.rows("SELECT status FROM ApLoopRunData")
    notes = [f"start on a full disk: exit {full.returncode}, stderr {len(full.stderr.strip().splitlines())} line(s) "
             f"ending {full.stderr.strip().splitlines()[-1:]}, run rows {runs}"]
    t0 = time.monotonic()
    small = run(on_small_disk("256k", base, False, s.loop_cmd("--no-wait", "--idle", "0", "--retries", "2",
                                                               "--backoff", "2")), s.env)
    during = s.table()
    notes.append(f"disk with no room for images (--retries 2 --backoff 2): exit {small.returncode} after "
                 f"{time.monotonic() - t0:.0f} s; failed {len(during['failed'])}: "
                 f"{sorted(set(r.split(': ', 1)[0] for r in during['failed'].values()))}; e.g. "
                 f"{next(iter(during['failed'].values()), '')[:160]}")
    freed = run(s.loop_cmd("--no-wait", "--idle", "0", "--retry-failed"), s.env)
    notes.append(f"disk freed, --retry-failed: exit {freed.returncode}")
    return notes


# ---------------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4, help="movies per fault (at least 3 for badinput)")
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma-separated faults of {', '.join(FAULTS)}")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    faults = [f.strip() for f in args.only.split(",") if f.strip()]
    root = Path(tempfile.mkdtemp(prefix="appion-faults-"))
    sim = root / "sim"
    subprocess.run([*PY, "simulate", "session", "--out", str(sim), "--n", str(max(args.n, 3)), "--size", "512",
                    "--frames", "8", "--dose-per-frame", "1.5", "--name", "lp", "--format", "tiff", "--seed", "4"],
                   check=True, capture_output=True, env=env_for(root / "simhome"))
    mariadb = None
    results = []
    try:
        for fault in faults:
            t0 = time.monotonic()
            needs_db = fault in ("outage", "sigterm")
            if needs_db and mariadb is None:
                from tests.privateservices import PrivateMariaDB

                mariadb = PrivateMariaDB(Path(tempfile.mkdtemp(prefix="appion-faults-mariadb-")))
                mariadb.start()
            s = Session(root, f"f{fault}", sim / "frames", args.n, mariadb if needs_db else None)
            try:
                fn = globals()[f"fault_{fault}"]
                notes = fn(s, mariadb) if needs_db else fn(s)
            except Exception as exc:  # a fault that could not be staged is reported, the others still run
                notes = [f"could not run: {type(exc).__name__}: {exc}"]
            results.append((fault, s.table(), notes, time.monotonic() - t0))
            print(f"[{fault} done in {time.monotonic() - t0:.0f} s]", file=sys.stderr, flush=True)
    finally:
        if mariadb is not None:
            mariadb.close()
            shutil.rmtree(mariadb.dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'fault':<10} {'imported':>8} {'stored once':>11} {'duplicated':>10} {'lost':>5} {'failed':>6}  seconds")
    for fault, t, _, seconds in results:
        print(f"{fault:<10} {t['imported']:>8} {t['once']:>11} {t['duplicated']:>10} {t['lost']:>5} "
              f"{len(t['failed']):>6}  {seconds:7.0f}")
    for fault, t, notes, _ in results:
        print(f"\n{fault}:")
        for note in notes:
            print(f"  {note}")
        for name, reason in t["failed"].items():
            print(f"  failed {name}: {reason}")
    if args.keep:
        print(f"\nworking directory: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
