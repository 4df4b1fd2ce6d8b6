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
