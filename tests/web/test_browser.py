"""The session page in a real browser (headless system Chromium) on rows inserted directly.

Exactly known values: every stored value shown, the failure reason, thumbnails and charts drawn,
and a new exposure that appears and then completes without a reload.  The same page during a
real loop run: test_browser_loop.py.  Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest

from tests.web.conftest import read_table, save_screenshot, wait_for
from tests.web.synthetic import add_queued_exposure, complete_exposure, insert_session

pytestmark = pytest.mark.timeout(180)

def write_sum(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(rng.normal(size=(128, 128)).astype(np.float32))


def test_live_page_on_inserted_rows(db, serve, chromium, tmp_path):
    s = insert_session("live", 12, tmp_path / "img", tmp_path / "runs", n_failed=1, n_pending=1)
    for k in range(10):
        write_sum(tmp_path / "img" / f"live_{k:05d}en-a.mrc", k)
    server = serve(dict(os.environ))
    chromium.get(f"{server.url}/session/{s.session_id}/")
    table = wait_for(lambda: len(read_table(chromium)) == 12 and read_table(chromium), what="12 rows")
    for image_id, truth in s.truth.items():
        row = table[image_id]
        assert row["status"] == truth["status"]
        for key in ("drift", "defocus1", "defocus2", "astig", "resolution", "score"):
            if key in truth:
                assert row[key] == truth[key], (image_id, key)
        if truth["status"] == "failed":
            assert truth["reason"] in row["reason"]
    wait_for(lambda: chromium.execute_script(
        "return [...document.querySelectorAll('td.thumb img')].filter(i => i.complete && i.naturalWidth > 0).length")
        == 10, what="10 thumbnails loaded")
    wait_for(lambda: chromium.execute_script("return document.querySelectorAll('#chart-drift svg path.dots').length"),
             what="drift chart drawn")

    chromium.execute_script("window.__not_reloaded = true;")
    new_id = add_queued_exposure(s, 12)
    wait_for(lambda: read_table(chromium).get(new_id, {}).get("status") == "queued", what="new exposure row")
    truth = complete_exposure(s, new_id, 12)
    row = wait_for(lambda: (r := read_table(chromium).get(new_id)) and r["status"] == "done" and r, what="row done")
    for key in ("drift", "defocus1", "defocus2", "astig", "resolution", "score"):
        assert row[key] == truth[key], key
    assert chromium.execute_script("return window.__not_reloaded === true"), "the page reloaded"
    assert chromium.find_element("css selector", '[data-key="n_exposures"]').text == "13"
    assert chromium.find_element("css selector", '[data-key="n_done"]').text == "11"
    assert list(read_table(chromium))[0] == new_id  # newest first
    save_screenshot(chromium, "web_session_inserted.png")
