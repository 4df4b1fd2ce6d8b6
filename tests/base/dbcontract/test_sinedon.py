"""sinedon semantics: identical rows reused, newest first, safe SEQ parsing, cross-database references."""
import pytest

from appion.base.db import models as m
from appion.base.db.fields import SeqError, format_seq, parse_seq
from appion.base.db.sinedon import insert, newest


def test_identical_row_is_reused(db):
    a, created_a = insert(m.InstrumentData, name="Krios", hostname="tem1", cs=2.7e-3)
    b, created_b = insert(m.InstrumentData, name="Krios", hostname="tem1", cs=2.7e-3)
    assert created_a and not created_b
    assert a.id == b.id
    assert m.InstrumentData.objects.count() == 1


def test_different_or_partial_rows_are_new(db):
    a, _ = insert(m.InstrumentData, name="Krios", hostname="tem1", cs=2.7e-3)
    b, created = insert(m.InstrumentData, name="Krios", hostname="tem1", cs=2.0e-3)
    c, created_c = insert(m.InstrumentData, name="Krios", hostname="tem1")  # cs NULL is a different row
    assert created and created_c
    assert len({a.id, b.id, c.id}) == 3


def test_references_take_part_in_identity(db):
    s1, _ = insert(m.SessionData, name="s1")
    s2, _ = insert(m.SessionData, name="s2")
    p1, _ = insert(m.PresetData, session=s1, name="en", dose=4e21)
    p1b, created = insert(m.PresetData, session=s1, name="en", dose=4e21)
    p2, created2 = insert(m.PresetData, session_id=s2.id, name="en", dose=4e21)
    assert not created and p1.id == p1b.id
    assert created2 and p2.id != p1.id


def test_newest_first(db):
    ids = [insert(m.ApPathData, path=f"/r/{i}")[0].id for i in range(3)]
    assert [r.id for r in m.ApPathData.objects.all()] == sorted(ids, reverse=True)
    insert(m.SessionData, name="same", comment="old")
    latest, _ = insert(m.SessionData, name="same", comment="new")
    assert newest(m.SessionData, name="same").id == latest.id


def test_cross_database_reference_resolves(db):
    """An appion row's REF|leginondata|... column leads back to the Leginon image (one query per hop)."""
    session, _ = insert(m.SessionData, name="x", image_path="/img")
    image, _ = insert(m.AcquisitionImageData, session=session, filename="x_001en", image="x_001en.mrc")
    run, _ = insert(m.ApAceRunData, name="ctfrun1", session_id=session.id)
    ctf, _ = insert(m.ApCtfData, acerun=run, image_id=image.id, defocus1=1.5e-6, defocus2=1.6e-6)
    again = m.ApCtfData.objects.get(id=ctf.id)
    assert again.image.filename == "x_001en"
    assert again.image.session.image_path == "/img"
    assert again.acerun.session.name == "x"


def test_seq_round_trip_and_safety():
    assert parse_seq(format_seq([1, 2.5, "a", (3, 4)])) == [1, 2.5, "a", [3, 4]]
    assert parse_seq(None) is None
    assert parse_seq("[[10, 20], [30, 40]]") == [[10, 20], [30, 40]]
    for evil in ("__import__('os').system('true')", "[open('/etc/passwd')]", "{1: 2}", "[1, {2}]", "lambda: 1"):
        with pytest.raises(SeqError):
            parse_seq(evil)


def test_seq_column_stored_as_literal_text(db):
    plan, _ = insert(m.CorrectorPlanData, bad_rows=format_seq([5, 9]), bad_cols=format_seq([]),
                     bad_pixels=format_seq([(1, 2)]))
    row = m.CorrectorPlanData.objects.get(id=plan.id)
    assert row.bad_rows == "[5, 9]"
    assert parse_seq(row.bad_pixels) == [[1, 2]]


def test_text_identity_is_exact(db):
    """MySQL's default collations compare case- and trailing-space-insensitively; identity must not."""
    a, _ = insert(m.InstrumentData, name="Krios", hostname="tem1")
    b, created_b = insert(m.InstrumentData, name="KRIOS", hostname="tem1")
    c, created_c = insert(m.InstrumentData, name="Krios ", hostname="tem1")
    d, created_d = insert(m.InstrumentData, name="Krios", hostname="tem1")
    assert created_b and created_c and not created_d
    assert len({a.id, b.id, c.id}) == 3 and d.id == a.id


def test_rows_written_without_a_timestamp_get_one(db):
    """Leginon and classic Appion never name DEF_timestamp: tables appion creates must default it."""
    from django.db import connections

    from appion.base.db.router import alias_for

    conn = connections[alias_for(m.ApPathData)]
    q = conn.ops.quote_name
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {q('ApPathData')} ({q('path')}) VALUES (%s)", ["/classic/run1"])
    row = m.ApPathData.objects.get(path="/classic/run1")
    assert row.timestamp is not None and row.timestamp.year >= 2024


def test_per_project_appion_database_through_processingdb(db):
    """use_appion_database(project) points appiondata at the database processingdb names (MySQL)."""
    from django.db import connections

    from appion.base.db import use_appion_database

    config = db
    if config.embedded:
        assert use_appion_database(7) == config.leginon.name  # one file holds everything
        return
    from tests.conftest import mysql_exec

    base = config.appion.name
    other = f"{base}_p7"
    mysql_exec(f"DROP DATABASE IF EXISTS `{other}`; CREATE DATABASE `{other}`; "
               f"CREATE TABLE `{other}`.`ApPathData` LIKE `{base}`.`ApPathData`")
    try:
        project, _ = insert(m.Project, name="p7")
        insert(m.ProcessingDB, project=project, appiondb=other)
        assert use_appion_database(project.id) == other
        insert(m.ApPathData, path="/p7/run")
        assert mysql_exec(f"SELECT COUNT(*) FROM `{other}`.`ApPathData`").strip() == "1"
        assert mysql_exec(f"SELECT COUNT(*) FROM `{base}`.`ApPathData`").strip() == "0"
        assert use_appion_database(None) == base  # back to the configured database
        assert not m.ApPathData.objects.filter(path="/p7/run").exists()
        unknown, _ = insert(m.Project, name="no processingdb row")
        assert use_appion_database(unknown.id) == base  # falls back to the configured one
    finally:
        use_appion_database(None)
        connections["appion"].close()
        mysql_exec(f"DROP DATABASE IF EXISTS `{other}`")
