"""The microscope in a real headless browser: Playwright for Python driving Debian's Chromium.

Navigates model -> layer -> unit -> next unit (by clicks and by the keyboard), uses the jump box,
checks that every image loaded (natural size > 0) and that the console stayed free of errors,
both from file:// (a static copy) and under ``featviz serve`` (where an unbuilt unit renders on
demand). Screenshots go to $FEATVIZ_SCREENSHOTS (or the test's temporary folder).

Needs /usr/bin/chromium and the ``playwright`` package: ``.ci/install-browser`` installs both.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FEATVIZ_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (run .ci/install-browser, or set FEATVIZ_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/install-browser)")

from featviz.microscope import build  # noqa: E402

from test_microscope import TINY, make_photos, tiny_model  # noqa: E402

pytestmark = pytest.mark.slow
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    photos = make_photos(tmp_path_factory.mktemp("photos"))
    site = tmp_path_factory.mktemp("site")
    build(tiny_model(), site, photos, **(TINY | {"layers": ["c2", "c3"], "size": 48}))
    return site


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("FEATVIZ_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def wait_js(page, expression: str, timeout: float = 60.0) -> None:
    """Poll a JavaScript expression from Python (the server's Content-Security-Policy forbids the
    in-page eval that Playwright's wait_for_function uses, as it should)."""
    t = time.monotonic()
    while not page.evaluate(expression):
        if time.monotonic() - t > timeout:
            raise AssertionError(f"timed out waiting for {expression} on {page.url}")
        time.sleep(0.05)


class Watch:
    """A page that records console errors and page errors."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1200, "height": 2400})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def images_loaded(self) -> list:
        self.page.wait_for_load_state("load")
        self.page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        wait_js(self.page, "Array.from(document.images).every(i => i.complete)")
        imgs = self.page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert imgs, f"no images on {self.page.url}"
        bad = [src for src, w in imgs if not w > 0]
        assert not bad, f"images that did not load on {self.page.url}: {bad}"
        return imgs

    def shot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self):
        self.context.close()


def test_navigate_a_static_site_from_file_urls(site, browser, shots, tmp_path):
    copy = tmp_path / "copy"  # any folder or file share: no server at all
    shutil.copytree(site, copy)
    w = Watch(browser)
    page = w.page
    page.goto((copy / "index.html").as_uri())
    # the jump box of the site's front page finds a model by name, in the folder the build named
    page.fill("#jump-input", "no such model")
    page.press("#jump-input", "Enter")
    wait_js(page, "document.getElementById('jump-msg').textContent.includes('no model no such model')")
    page.fill("#jump-input", "TINY")
    page.press("#jump-input", "Enter")
    page.wait_for_url("**/tiny/index.html")
    page.go_back()
    page.click("text=tiny")
    page.wait_for_url("**/tiny/index.html")
    assert page.locator("table.layers tbody tr").count() == 4
    w.images_loaded()  # class visualizations
    w.shot(shots, "file-1-model")
    page.click("table.layers >> text=c2")
    page.wait_for_url("**/tiny/c2/index.html")
    assert page.locator(".grid .tile").count() == 12 and page.locator(".grid .tile.unbuilt").count() == 8
    w.images_loaded()
    w.shot(shots, "file-2-layer")
    page.click("#u1")
    page.wait_for_url("**/tiny/c2/1/index.html")
    imgs = w.images_loaded()
    assert len(imgs) >= 3 + 3 + 3  # visualizations, diversity, some examples
    w.shot(shots, "file-3-unit")
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/tiny/c2/2/index.html")
    w.images_loaded()
    page.keyboard.press("j")
    page.wait_for_url("**/tiny/c2/3/index.html")
    page.keyboard.press("j")  # on to the next layer
    page.wait_for_url("**/tiny/c3/0/index.html")
    page.keyboard.press("k")
    page.wait_for_url("**/tiny/c2/3/index.html")
    w.shot(shots, "file-4-next-unit")
    # jump box: a unit, a unit number of this layer, an unbuilt unit, a class by name
    page.keyboard.press("/")
    page.keyboard.type("c3:2")
    page.keyboard.press("Enter")
    page.wait_for_url("**/tiny/c3/2/index.html")
    page.fill("#jump-input", "1")
    page.press("#jump-input", "Enter")
    page.wait_for_url("**/tiny/c3/1/index.html")
    page.fill("#jump-input", "c3:9")
    page.press("#jump-input", "Enter")
    wait_js(page, "document.getElementById('jump-msg').textContent.includes('not built')")
    page.fill("#jump-input", "class class2")
    page.press("#jump-input", "Enter")
    page.wait_for_url("**/tiny/classes/2/index.html")  # every class has a page
    assert not w.errors, w.errors
    w.close()


@pytest.fixture(scope="module")
def server(site):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'featviz[serve]'")
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'featviz[serve]'")
    from featviz.server import serve_in_background

    with serve_in_background(site, tiny_model()) as running:
        yield running.url


def test_navigate_under_featviz_serve_and_render_on_demand(server, browser, shots):
    w = Watch(browser)
    page = w.page
    page.goto(server + "/")
    page.click("text=tiny")
    page.wait_for_url(server + "/tiny/")  # clean, stable URLs under the server
    page.click("table.layers >> text=c3")
    page.wait_for_url(server + "/tiny/c3/")
    w.images_loaded()
    page.click("#u0")
    page.wait_for_url(server + "/tiny/c3/0/")
    w.images_loaded()
    assert page.is_visible("#live")  # the on-demand form appears only under the server
    page.keyboard.press("ArrowRight")
    page.wait_for_url(server + "/tiny/c3/1/")
    w.images_loaded()
    w.shot(shots, "serve-1-unit")
    # a unit that was not built: its page is made on the fly and its images render on demand
    page.goto(server + "/tiny/c3/11/")
    wait_js(page, "document.querySelectorAll('[data-pending]').length === 0", timeout=60)
    wait_js(page, "document.getElementById('live-status').textContent.startsWith('done')")
    imgs = w.images_loaded()
    assert sum("/_live/tiny/c3/11/" in src for src, _ in imgs) == 2 * (3 + 3)  # in place and in the results (3 visualizations, 3 diverse)
    assert page.evaluate("document.getElementById('live-progress').value") == 1
    w.shot(shots, "serve-2-on-demand")
    assert not w.errors, w.errors
    w.close()


@pytest.fixture(scope="module")
def circuit_site(tmp_path_factory):
    """Every unit of c1 and the first 8 of c2 (so that every circuit of c2 links to a built unit), and
    a second model in the same site for the side-by-side page."""
    from featviz.microscope.compare import compare
    from featviz.models import from_module

    photos = make_photos(tmp_path_factory.mktemp("photos"))
    site = tmp_path_factory.mktemp("circuit-site")
    model = tiny_model()
    build(model, site, photos, **(TINY | {"layers": ["c1", "c2"], "units": 8, "steps": 2}))
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    other = tiny_model().network
    for p in other.parameters():  # a differently initialised relative: features partly shared
        p.data += 0.5 * p.data.std() * torch.randn_like(p.data)
    relative = from_module(other, name="relative", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                           labels=[f"class{i}" for i in range(10)], main_layers=["c1", "c2", "c3", "fc"])
    build(relative, site, photos, **(TINY | {"layers": ["c1", "c2"], "units": 2, "steps": 2}))
    compare(site, model, relative)
    return site


def test_circuits_caricature_class_and_comparison_pages(circuit_site, browser, shots):
    w = Watch(browser)
    page = w.page
    unit = circuit_site / "tiny" / "c2" / "5" / "index.html"
    page.goto(unit.as_uri())
    w.images_loaded()
    # circuits: real thumbnails, each linking to a unit page of c1 that exists
    tiles = page.evaluate("Array.from(document.querySelectorAll('#circuits-panel a.utile')).map("
                          "a => [a.getAttribute('href'), a.querySelector('img').naturalWidth])")
    assert len(tiles) >= 6 and all(width > 0 for _, width in tiles)
    for href, _ in tiles:
        assert "/c1/" in href and (unit.parent / href).resolve().is_file(), href
    # caricature: the photo and its caricature, both loaded
    pics = page.evaluate("Array.from(document.querySelectorAll('#caricature img')).map(i => [i.src, i.naturalWidth])")
    assert len(pics) == 2 and pics[1][0].endswith("/tiny/c2/5/caricature.png") and all(w_ > 0 for _, w_ in pics)
    w.shot(shots, "circuits-1-unit")
    first = tiles[0][0]
    page.click(f'#circuits-panel a[href="{first}"]')
    page.wait_for_url("**/tiny/c1/*/index.html")
    w.images_loaded()
    # the layer page lists the strongest connections into c2
    page.goto((circuit_site / "tiny" / "c2" / "index.html").as_uri())
    assert page.locator("#connections tbody tr").count() == 12
    w.images_loaded()
    # class pages: the model page's filter, then the page of the class
    page.goto((circuit_site / "tiny" / "index.html").as_uri())
    page.fill("#class-filter", "class2")
    assert page.evaluate("Array.from(document.querySelectorAll('ol.allclasses li')).filter(li => !li.hidden)"
                         ".map(li => li.textContent)") == ["class2"]
    page.click("ol.allclasses >> text=class2")
    page.wait_for_url("**/tiny/classes/2/index.html")
    imgs = w.images_loaded()
    assert any(src.endswith("_classes/0002.png") for src, _ in imgs)
    assert page.locator("#class-top img").count() == 3  # k top photos by the class's logit
    w.shot(shots, "circuits-2-class")
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/tiny/classes/3/index.html")
    page.keyboard.press("/")
    page.keyboard.type("class 1")
    page.keyboard.press("Enter")
    page.wait_for_url("**/tiny/classes/1/index.html")
    # the side-by-side page, linked from the model page
    page.goto((circuit_site / "tiny" / "index.html").as_uri())
    page.click("#comparisons >> text=tiny and relative")
    page.wait_for_url("**/_compare/tiny--relative/index.html")
    w.images_loaded()
    assert page.locator("[id^=compare-class-] img").count() == 2 * 3  # 3 classes, both models
    assert page.locator(".compare-layers").count() == 2  # c1 ~ c1, c2 ~ c2
    rows = page.evaluate("Array.from(document.querySelectorAll('#pair-1 table')[0].querySelectorAll('tbody tr'))"
                         ".map(tr => parseFloat(tr.lastElementChild.textContent))")
    assert rows and all(-1 <= r <= 1 for r in rows) and rows == sorted(rows, reverse=True)
    w.shot(shots, "circuits-3-compare")
    assert not w.errors, w.errors
    w.close()
