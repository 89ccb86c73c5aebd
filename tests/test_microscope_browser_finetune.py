"""A site built from a fine-tuning run, in a real headless browser (Playwright + Chromium): a unit page
shows the same unit of the starting network beside it, with images that load, and the model page shows
the CKA-by-depth plot. The site is conftest.py's ``finetuned_site`` (lite0 fine-tuned for 2 steps on the
offline demo task, built from RUN/model.toml). Screenshots go to $FEATVIZ_SCREENSHOTS (or a temporary folder).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FEATVIZ_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (run .ci/install-browser, or set FEATVIZ_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/install-browser)")

from test_microscope_browser import ARGS, Watch  # noqa: E402

pytestmark = pytest.mark.slow


def test_unit_page_shows_the_starting_network_and_the_model_page_the_cka_plot(finetuned_site, tmp_path):
    _run, site, _photos, _report = finetuned_site
    shots = Path(os.environ.get("FEATVIZ_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    copy = tmp_path / "copy"  # a static copy, browsed from file://
    shutil.copytree(site, copy)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        w = Watch(browser)
        page = w.page
        page.goto((copy / "shapes" / "head" / "1" / "index.html").as_uri())
        w.images_loaded()
        sides = page.locator("#start figure.side")
        assert sides.count() == 2
        assert [sides.nth(i).get_attribute("data-role") for i in range(2)] == ["this network", "starting network"]
        start = sides.nth(1)
        # the start's channel visualization and its top photos, from the start's own folder, all loaded
        images = start.locator("img").evaluate_all("els => els.map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert images[0][0].endswith("shapes_start/head/1/channel.png") and images[0][1] == 32
        assert len(images) == 1 + 3 and all(w_ > 0 for _src, w_ in images)
        assert all("shapes_start/_examples/" in src for src, _w in images[1:])
        assert "shapes@start" in start.inner_text()
        w.shot(shots, "finetune-1-unit")
        start.locator("a").first.click()  # on to the same unit of the start
        page.wait_for_url("**/shapes_start/head/1/index.html")
        w.images_loaded()
        page.goto((copy / "shapes" / "index.html").as_uri())
        w.images_loaded()
        plot = page.locator("#cka img.plot")
        assert plot.count() == 1
        assert plot.evaluate("i => i.naturalWidth") > 300
        assert "lowest" in page.locator("#cka figcaption").inner_text()
        w.shot(shots, "finetune-2-model")
        assert not w.errors, w.errors
        w.close()
        browser.close()
