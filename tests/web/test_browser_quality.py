"""The session and exposure pages of a curated run in a real browser (headless system Chromium), on rows inserted
directly: the share link shown, the thresholds drawn on the metric charts (a limit tightened during the run
included) with rejected exposures told apart, the backlog and lag charts, the filters (with a newly rejected
exposure appearing in the rejected filter without a reload), and rejecting an exposure by hand from its page.
Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.web.conftest import read_table, save_screenshot, wait_for
from tests.web.synthetic import add_quality, complete_exposure, insert_session
from tests.web.test_browser import write_sum
from tests.web.test_quality_page import STRICT, ids_with, thresholds_of
from tests.web.test_share import TOKEN, config_env

pytestmark = pytest.mark.timeout(240)

LIMITS_JS = """return [...document.querySelectorAll('#chart-' + arguments[0] + ' svg path.limit')]
                 .map(p => Number(p.dataset.limit));"""


def rows_shown(driver) -> list[int]:
    return [int(i) for i in driver.execute_script(
        "return [...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.id)")]


def text_of(driver, css: str) -> str:
    """An element's text, "" while it is not there (e.g. while the next page loads)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)


def click_filter(driver, name: str) -> None:
    """Click a filter and wait until it is the active one.  The click is repeated when it landed while the page
    was still being replaced by the previous filter's (a busy machine): the element it hit was already gone."""
    def active() -> bool:
        return driver.execute_script(
            "return document.querySelector('#filters a.active') && document.querySelector('#filters a.active')"
            ".dataset.show") == name

    for _ in range(4):
        try:
            driver.find_element("css selector", f'#filters a[data-show="{name}"]').click()
        except Exception:  # stale or not yet there: the previous navigation is still going on
            pass
        try:
            wait_for(active, timeout_s=5.0, what=f"the {name} filter active")
            return
        except pytest.fail.Exception:  # not active yet: click again
            continue
    wait_for(active, what=f"the {name} filter active")


def test_curated_session_in_a_browser(db, serve, chromium, tmp_path):
    from appion.base.db import models as m

    s = insert_session("curate", 26, tmp_path / "img", tmp_path / "runs", n_failed=2, n_pending=2)
    add_quality(s, thresholds_of)
    for k in range(22):
        write_sum(tmp_path / "img" / f"curate_{k:05d}en-a.mrc", k)
    server = serve(config_env(tmp_path, f'share_token = "{TOKEN}"\n'))
    chromium.get(f"{server.url}/session/{s.session_id}/")
    wait_for(lambda: len(read_table(chromium)) == 26, what="26 rows")

    # the share link, for a local user
    link = chromium.find_element("css selector", "#share-link").get_attribute("href")
    assert re.fullmatch(rf"http://127\.0\.0\.1:\d+/session/{s.session_id}/\?token={re.escape(TOKEN)}", link)

    # the thresholds in force, drawn where they applied: CTF 5 Å, then 4.5 Å from the 9th exposure on
    wait_for(lambda: chromium.execute_script(LIMITS_JS, "resolution"), what="CTF limit lines drawn")
    assert set(chromium.execute_script(LIMITS_JS, "resolution")) == {5.0, 4.5}
    assert set(chromium.execute_script(LIMITS_JS, "tilt")) == {15.0}
    assert set(chromium.execute_script(LIMITS_JS, "ice")) == {1.08}
    assert chromium.execute_script(LIMITS_JS, "drift") == []  # no drift limit in this run
    labels = chromium.execute_script("return [...document.querySelectorAll('#chart-resolution .limit-label')]"
                                     ".map(t => t.textContent)")
    assert labels == ["limit 4.5"]  # the newest limit is named
    # each limit line sits at its value on the chart's own axis: compare with a tick's position
    geometry = chromium.execute_script("""
        const svg = document.querySelector('#chart-tilt svg');
        const ticks = [...svg.querySelectorAll('text[text-anchor="end"]')]
          .filter(t => /^-?[0-9.]+$/.test(t.textContent));
        const line = svg.querySelector('path.limit').getAttribute('d');
        return {ticks: ticks.map(t => [Number(t.textContent), Number(t.getAttribute('y'))]),
                y: Number(line.split(' ')[1].split('H')[0])};""")
    (v0, y0), (v1, y1) = geometry["ticks"][0], geometry["ticks"][-1]
    assert geometry["y"] == pytest.approx(y0 + (15.0 - v0) * (y1 - y0) / (v1 - v0), abs=0.2)
    assert chromium.find_element("css selector", "#thresholds-text").text == (
        "CTF fit resolution ≤ 4.5 Å, relative ice thickness ≤ 1.08, tilt ≤ 15°")
    n_rejected = len(ids_with(s, verdict="rejected"))
    assert chromium.execute_script("return document.querySelectorAll('#chart-resolution path.dots.rejected')"
                                   ".length") == 1
    count = chromium.execute_script("return document.querySelector('#chart-resolution .count').textContent")
    assert count == f"22 of 26 · {n_rejected} rejected"
    for key in ("drift", "defocus", "astigmatism", "tilt", "ice"):
        assert chromium.execute_script(f"return document.querySelectorAll('#chart-{key} svg path.dots').length"), key
    assert chromium.execute_script("return document.querySelectorAll('#chart-backlog path.line').length") == 1
    assert chromium.execute_script("return document.querySelector('#chart-lag .count').textContent") == \
        "22 done · median 8 s"
    save_screenshot(chromium, "web_quality_session.png", full_page=True)

    # rejected rows greyed, with their reasons
    table = read_table(chromium)
    for image_id in ids_with(s, verdict="rejected"):
        assert table[image_id]["status"] == "rejected"
        assert table[image_id]["reason"] == s.truth[image_id]["verdict_reason"]
    greyed = chromium.execute_script("return getComputedStyle(document.querySelector('#rows tr.rejected')).color")
    assert greyed == "rgb(107, 114, 128)"

    # the filters
    click_filter(chromium, "rejected")
    assert rows_shown(chromium) == ids_with(s, verdict="rejected")
    assert chromium.find_element("css selector", '[data-filter-count="rejected"]').text == str(n_rejected)
    chromium.execute_script("window.__not_reloaded = true;")
    # a queued exposure is processed and rejected while the page shows the rejected ones: it appears by itself
    newcomer = s.source_ids[-1]
    complete_exposure(s, newcomer, 25)
    m.ApQualityData.objects.create(qualityrun_id=m.ApQualityRunData.objects.get().id, image_id=newcomer,
                                   ctf_resolution_A=6.2, tilt_deg=2.0, ice_thickness=1.03, rejected=True,
                                   reason="CTF fit resolution 6.2 Å > 4.5 Å", thresholds=json.dumps(STRICT))
    wait_for(lambda: rows_shown(chromium)[:1] == [newcomer], what="the newly rejected exposure in the filter")
    assert read_table(chromium)[newcomer]["reason"] == "CTF fit resolution 6.2 Å > 4.5 Å"
    wait_for(lambda: text_of(chromium, '[data-filter-count="rejected"]') == str(n_rejected + 1),
             what="the rejected count")
    assert chromium.execute_script("return window.__not_reloaded === true"), "the page reloaded"
    save_screenshot(chromium, "web_quality_rejected_filter.png", full_page=True)
    click_filter(chromium, "failed")
    assert rows_shown(chromium) == ids_with(s, status="failed")
    assert all(r["status"] == "failed" for r in read_table(chromium).values())
    click_filter(chromium, "accepted")
    assert rows_shown(chromium) == ids_with(s, verdict="accepted")
    click_filter(chromium, "all")
    assert len(rows_shown(chromium)) == 26

    # reject an accepted exposure by hand from its page
    target = ids_with(s, verdict="accepted")[0]
    chromium.get(f"{server.url}/exposure/{target}/")
    assert "accepted" in chromium.find_element("css selector", "#verdict-text").text
    assert "automatically (quality step)" in chromium.find_element("css selector", "#verdict-text").text
    chromium.find_element("css selector", "#reject").click()  # no reason: the browser asks for one first
    assert chromium.execute_script("return document.querySelector('input[name=reason]').validity.valueMissing")
    assert not m.ApQualityVerdictData.objects.exists()
    chromium.find_element("css selector", "input[name=reason]").send_keys("ice contamination at the edge")
    chromium.find_element("css selector", "input[name=by]").send_keys("fay")
    chromium.find_element("css selector", "#reject").click()
    wait_for(lambda: "by hand" in text_of(chromium, "#verdict-text"), what="the verdict page after rejecting")
    assert chromium.find_element("css selector", "#status").text == "rejected"
    assert chromium.find_element("css selector", "#verdict-user").text == "fay"
    assert chromium.find_element("css selector", "#verdict-reason").text == "ice contamination at the edge"
    row = m.ApQualityVerdictData.objects.get()
    assert (row.image_id, row.accepted, row.user) == (target, False, "fay")
    assert m.ViewerImageStatus.objects.filter(image_id=target, status="hidden").exists()
    save_screenshot(chromium, "web_quality_exposure.png", full_page=True)
