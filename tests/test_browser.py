"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright): open the demo,
change one control in each tab, run it, and check what is rendered. With EVMAMBA_SCREENSHOTS=DIR the
test also saves a screenshot of each tab there (the README's pictures come from this)."""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("EVMAMBA_REQUIRE_BROWSER") != "1":
    pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")
expect, sync_playwright = playwright_api.expect, playwright_api.sync_playwright

TIMEOUT = 240_000  # ms: computations run on a 2-core CPU
expect.set_options(timeout=TIMEOUT)  # expect() has its own timeout (5 s), not the page's


@pytest.fixture(scope="module")
def page(app_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT)
        page.goto(app_url)
        yield page
        browser.close()


def shot(page, name):
    folder = os.environ.get("EVMAMBA_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def panel(page):
    return page.locator("[role=tabpanel]:visible").first


def test_skip_sampling(page):
    expect(page.get_by_text("64 tokens read (SS2D reads 256)")).to_be_visible()  # drawn on load
    page.get_by_label("number input for grid height (56: stage 1 at 224x224)").fill("7")
    page.get_by_label("number input for step p (ES2D) or window side (windows)").fill("3")
    page.get_by_role("button", name="Draw").click()
    expect(page.get_by_text("padded to 9x9")).to_be_visible()
    expect(panel(page).locator(".js-plotly-plot").first).to_be_visible()
    assert panel(page).locator(".js-plotly-plot").count() == 3
    shot(page, "skip-sampling")


def test_receptive_fields(page):
    open_tab(page, "Receptive fields")
    # computed on load: the trained model's per-route fields on its task's test images
    expect(panel(page).get_by_text("weights from study:markers, trained on the markers task")).to_be_visible()
    expect(panel(page).get_by_text("level stage: the network to stage 0")).to_be_visible()
    expect(panel(page).locator("img").first).to_be_visible()
    shot(page, "receptive-fields")
    panel(page).get_by_role("radio", name="mixer").check()
    page.get_by_role("button", name="Compute").click()
    expect(page.get_by_text("level mixer: layers.0.blocks.0.op")).to_be_visible()
    expect(panel(page).locator("img").first).to_be_visible()  # the figure and the position picker
    expect(panel(page).get_by_text("area ratio 0.99 (RepLKNet)")).to_be_visible()


def test_attribution(page):
    open_tab(page, "Attribution")
    panel(page).get_by_label("Integrated Gradients").uncheck()
    page.get_by_role("button", name="Explain").click()
    expect(panel(page).get_by_text("image: markers test image 0").first).to_be_visible()
    expect(panel(page).locator("img").first).to_be_visible()
    shot(page, "attribution")


def test_hidden_attention(page):
    open_tab(page, "Hidden attention")
    panel(page).get_by_label("query row (-1: centre)").fill("3")
    panel(page).get_by_label("query column (-1: centre)").fill("2")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("query (3, 2)")).to_be_visible()
    expect(panel(page).locator("img").first).to_be_visible()
    shot(page, "hidden-attention")


def test_ablations(page):
    open_tab(page, "Ablations")
    expect(panel(page).get_by_text("24 rows.")).to_be_visible()  # shown on load
    panel(page).get_by_label("scan").first.click()
    page.get_by_role("option", name="SS2D").click()
    page.get_by_role("button", name="Show").click()
    expect(panel(page).get_by_text("12 rows.")).to_be_visible()
    expect(panel(page).locator(".js-plotly-plot").first).to_be_visible()
    shot(page, "ablations")


def test_about(page):
    open_tab(page, "About")
    expect(page.get_by_text("What the pictures mean")).to_be_visible()
    expect(page.get_by_text("pei2024efficientvmamba")).to_be_visible()
