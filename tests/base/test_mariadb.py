"""The data layer on the real MariaDB: the same contract suite, plus `db init` against a live Leginon schema."""
import os
import subprocess
import sys

from tests.conftest import REPO, drop_mariadb, mysql_exec, require_mariadb, write_mariadb_config


def test_contract_suite_passes_on_mariadb():
    """Runs tests/base/dbcontract with APPION_TEST_DB=mariadb (separate leginon/project/appion databases)."""
    require_mariadb()
    env = {**os.environ, "APPION_TEST_DB": "mariadb"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", str(REPO / "tests" / "base" / "dbcontract")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-500:]


# A Leginon/Appion schema as sinedon creates it (TIMESTAMP defaults, TEXT, keys), with a column appion
# does not model and one appion table lacking a column, so `db init` has every reason to touch it.
LEGINON_DDL = [
    """CREATE TABLE `SessionData` (
  `DEF_id` int(20) NOT NULL AUTO_INCREMENT,
  `DEF_timestamp` timestamp NOT NULL DEFAULT current_timestamp(),
  `name` text DEFAULT NULL,
  `REF|UserData|user` int(20) DEFAULT NULL,
  `image path` text DEFAULT NULL,
  `frame path` text DEFAULT NULL,
  `comment` text DEFAULT NULL,
  `hidden` tinyint(1) DEFAULT NULL,
  `REF|InstrumentData|instrument` int(20) DEFAULT NULL,
  PRIMARY KEY (`DEF_id`),
  KEY `DEF_timestamp` (`DEF_timestamp`),
  KEY `REF|UserData|user` (`REF|UserData|user`)
) ENGINE=MyISAM DEFAULT CHARSET=latin1""",
    """CREATE TABLE `AcquisitionImageData` (
  `DEF_id` int(20) NOT NULL AUTO_INCREMENT,
  `DEF_timestamp` timestamp NOT NULL DEFAULT current_timestamp(),
  `REF|SessionData|session` int(20) DEFAULT NULL,
  `MRC|image` text DEFAULT NULL,
  `filename` text DEFAULT NULL,
  `label` text DEFAULT NULL,
  `pixeltype` text DEFAULT NULL,
  PRIMARY KEY (`DEF_id`),
  KEY `REF|SessionData|session` (`REF|SessionData|session`)
) ENGINE=MyISAM DEFAULT CHARSET=latin1""",
]
APPION_DDL = [
    """CREATE TABLE `ApCtfData` (
  `DEF_id` int(20) NOT NULL AUTO_INCREMENT,
  `DEF_timestamp` timestamp NOT NULL DEFAULT current_timestamp(),
  `REF|ApAceRunData|acerun` int(20) DEFAULT NULL,
  `REF|leginondata|AcquisitionImageData|image` int(20) DEFAULT NULL,
  `defocus1` double DEFAULT NULL,
  `defocus2` double DEFAULT NULL,
  PRIMARY KEY (`DEF_id`)
) ENGINE=MyISAM DEFAULT CHARSET=latin1""",
]


def _show_create(db: str, table: str) -> str:
    return mysql_exec(f"SHOW CREATE TABLE `{table}`", db)


def test_db_init_leaves_existing_leginon_tables_unchanged(tmp_path):
    require_mariadb()
    prefix = f"appion_existing_{os.getpid()}"
    home = tmp_path / "home"
    write_mariadb_config(home, prefix)
    try:
        for ddl in LEGINON_DDL:
            mysql_exec(ddl, f"{prefix}_leg")
        for ddl in APPION_DDL:
            mysql_exec(ddl, f"{prefix}_ap")
        mysql_exec("INSERT INTO `SessionData` (`name`, `image path`) VALUES ('live', '/data/live')", f"{prefix}_leg")
        before = {t: _show_create(f"{prefix}_leg", t) for t in ("SessionData", "AcquisitionImageData")}
        before_ap = _show_create(f"{prefix}_ap", "ApCtfData")
        env = {**os.environ, "APPION_HOME": str(home)}
        env.pop("APPION_CONFIG", None)
        init = subprocess.run(["appion", "db", "init"], env=env, capture_output=True, text=True)
        assert init.returncode == 0, init.stderr
        after = {t: _show_create(f"{prefix}_leg", t) for t in before}
        assert after == before
        assert _show_create(f"{prefix}_ap", "ApCtfData") == before_ap
        assert mysql_exec("SELECT `name` FROM `SessionData`", f"{prefix}_leg").strip() == "live"
        # Missing tables were created, in the right databases.
        leg_tables = set(mysql_exec("SHOW TABLES", f"{prefix}_leg").split())
        ap_tables = set(mysql_exec("SHOW TABLES", f"{prefix}_ap").split())
        assert {"CameraEMData", "PresetData", "ScopeEMData"} <= leg_tables
        assert {"ApAceRunData", "ApDDAlignImagePairData"} <= ap_tables
        assert "ApAceRunData" not in leg_tables
        # `db check` reports what the pre-existing tables lack, and init never added it.
        check = subprocess.run(["appion", "db", "check"], env=env, capture_output=True, text=True)
        assert check.returncode == 1
        assert "AcquisitionImageData lacks columns" in check.stdout and "REF|CameraEMData|camera" in check.stdout
        assert "ApCtfData lacks columns" in check.stdout and "ctffind4_resolution" in check.stdout
        init2 = subprocess.run(["appion", "db", "init"], env=env, capture_output=True, text=True)
        assert init2.returncode == 0 and "created 0 tables" in init2.stdout
        assert {t: _show_create(f"{prefix}_leg", t) for t in before} == before
    finally:
        drop_mariadb(prefix)


def test_unreachable_server_is_one_clear_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[database]\nurl = "mysql://root:hunter2@127.0.0.1:3999/nowhere"\n')
    proc = subprocess.run(["appion", "--config", str(cfg), "db", "init"], capture_output=True, text=True,
                          env={**os.environ, "APPION_HOME": str(tmp_path)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "127.0.0.1:3999" in lines[0] and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_unknown_database_is_one_clear_line(tmp_path):
    require_mariadb()
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[database]\nurl = "mysql://root@127.0.0.1:3306/appion_no_such_db_xyz"\n')
    proc = subprocess.run(["appion", "db", "check", "--config", str(cfg)], capture_output=True, text=True,
                          env={**os.environ, "APPION_HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "appion_no_such_db_xyz" in proc.stderr


def test_two_importers_at_once_on_mariadb(mariadb_home, tmp_path):
    """Two `session import` processes on one directory against MariaDB register each movie once
    (InnoDB snapshot reads would let both find "no such row" and both insert one)."""
    import tomllib

    from appion.base.config import parse_database_url
    from appion.base.simulate.calc import MovieParams
    from appion.base.simulate.store import write_simulated_session

    home, env = mariadb_home
    write_simulated_session(tmp_path, 12, MovieParams(shape=(64, 64), n_frames=3), fmt="both", name="twice")
    cmd = ["appion", "session", "import", "--name", "twice", "--frames-dir", str(tmp_path / "frames"), "--apix",
           "1", "--kv", "300", "--cs", "2.7", "--dose", "9"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "skipped" not in err, err
    leg = parse_database_url(tomllib.loads((home / "config.toml").read_text())["database"]["leginon"], home).name
    counts = mysql_exec("SELECT (SELECT COUNT(*) FROM AcquisitionImageData), (SELECT COUNT(*) FROM CameraEMData), "
                        "(SELECT COUNT(*) FROM SessionData), (SELECT COUNT(*) FROM InstrumentData)", leg).split()
    assert counts == ["12", "12", "1", "2"]
