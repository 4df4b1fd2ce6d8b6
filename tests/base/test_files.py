"""appion.base.io.files: the one atomic-write mechanism every writer uses."""
from __future__ import annotations

import os
import stat

import pytest

from appion.base.io.files import write_atomic, write_text_atomic


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "out.mrc"

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_only_when_the_write_succeeds(tmp_path):
    target = tmp_path / "log.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        write_atomic(target, lambda tmp: (tmp.write_text("new, partial"), (_ for _ in ()).throw(ValueError("x"))))
    assert target.read_text() == "old"
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_temporary_name_is_hidden_part_and_unique(tmp_path):
    seen = []
    write_atomic(tmp_path / "a.tif", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"1")))
    write_atomic(tmp_path / "a.tif", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"2")))
    assert all(n.startswith(".a.tif.") and n.endswith(".part") for n in seen)
    assert seen[0] != seen[1]


def test_mode_is_set_and_default_follows_umask(tmp_path):
    script = write_text_atomic(tmp_path / "job.sh", "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    umask = os.umask(0)
    os.umask(umask)
    plain = write_text_atomic(tmp_path / "plain.txt", "x")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
