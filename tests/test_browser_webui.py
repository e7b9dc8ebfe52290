"""The Train Tools tab in headless Chromium inside a real WebUI (AUTOMATIC1111 or Forge).

Runs only when ``TRAIN_TOOLS_WEBUI_DIR`` points at a WebUI (started by tests/webui_server.py with this repository
linked into a temporary data folder's extensions and the tiny checkpoint in its models; for Forge also set
``TRAIN_TOOLS_WEBUI_ARGS=--always-cpu``). Skipped otherwise, as in CI.

In the WebUI's own page: the "Train Tools" tab sits with the WebUI's tabs and opens; its base-model list is the
WebUI's checkpoint list (the tiny checkpoint is in it); a project with a Unicode name is created, three pictures
are uploaded and the dataset report counts them; the Settings page has the "Train Tools" section; and our
javascript/train_tools.js raises no error in the console. Screenshots go to
tests/artifacts/browser_webui/<flavor>/ (a1111 or forge).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser_support import TabPage, drop_files
from tests.trainer_fixtures import tiny_sd1, write_picture  # noqa: F401 — tiny_sd1: a fixture by name
from tests.webui_server import CHECKPOINT_NAME, WEBUI_ENV

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PROJECT = "可爱的狗 webui"
OUR_SCRIPT = "train_tools.js"
LOAD_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.skipif(not os.environ.get(WEBUI_ENV),
                                reason=f"{WEBUI_ENV} is not set: no real WebUI to open the tab in")


@pytest.fixture(scope="module")
def server(tiny_sd1):  # noqa: F811
    from tests.webui_server import shared_server

    return shared_server(tiny_sd1)


@pytest.fixture(scope="module")
def flavor(server) -> str:
    return "forge" if (server.webui_dir / "modules_forge").is_dir() else "a1111"


@pytest.fixture(scope="module")
def artifacts(flavor) -> Path:
    folder = ROOT / "tests" / "artifacts" / "browser_webui" / flavor
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("webui_pictures")
    for i in range(3):
        write_picture(folder / f"dog_{i:02d}.png", (128, 112), seed=i)
    return sorted(str(p) for p in folder.glob("*.png"))


class Console:
    """Everything the page reported as an error: console.error lines and uncaught exceptions (with their stack)."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error.message}\n{error.stack or ''}"))

    def _console(self, message) -> None:
        if message.type == "error":
            location = message.location or {}
            self.errors.append(f"console.error at {location.get('url', '')}:{location.get('lineNumber', '')}: "
                               f"{message.text}")

    def ours(self) -> list[str]:
        return [e for e in self.errors if OUR_SCRIPT in e or "trainTools" in e]


@pytest.fixture()
def browser_page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


class WebUIPage(TabPage):
    """The tab inside the WebUI's page, with the WebUI's own tabs."""

    def main_tabs(self) -> list[str]:
        # lower case: Forge labels its first tab "Txt2img", A1111 "txt2img"
        return [t.strip().lower() for t in self.page.locator("#tabs > .tab-nav > button").all_text_contents()]

    def open_main_tab(self, name: str) -> None:
        exact = re.compile(rf"^\s*{re.escape(name)}\s*$", re.IGNORECASE)
        self.page.locator("#tabs > .tab-nav > button").filter(has_text=exact).first.click()


def test_the_tab_works_inside_the_webui(server, flavor, artifacts, pictures, browser_page):
    page = browser_page
    console = Console(page)
    ui = WebUIPage(page, artifacts)
    page.goto(server.base + "/")
    page.wait_for_selector("#tabs > .tab-nav > button", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_selector("#train_tools_root", state="attached", timeout=LOAD_TIMEOUT_MS)
    ui.shot("loaded")

    # The WebUI serves our script itself (a WebUI that cannot serve it would leave the tab without its poller)
    ours = page.evaluate("(name) => Array.from(document.querySelectorAll('script[src]')).map(s => s.src)"
                         ".filter(s => s.includes(name))", OUR_SCRIPT)
    assert len(ours) == 1, ours
    assert page.request.get(ours[0]).status == 200, ours[0]

    # The tab sits with the WebUI's own tabs, after txt2img, and opens
    tabs = ui.main_tabs()
    assert "txt2img" in tabs and "train tools" in tabs, tabs
    assert tabs.index("train tools") > tabs.index("txt2img"), tabs
    ui.open_main_tab("Train Tools")
    expect(ui.el("train_tools_root")).to_be_visible()
    expect(ui.el("train_tools_project")).to_be_visible()
    ui.shot("tab_opened")

    # The base-model list is the WebUI's checkpoint list
    titles = [m["title"] for m in server.get("/sdapi/v1/sd-models")]
    assert any(CHECKPOINT_NAME in t for t in titles), titles
    ui.section("Train")
    ui.el("train_tools_base_model").locator("input").click()
    options = page.locator("ul.options li")
    expect(options.first).to_be_visible()
    listed = [o.replace("✓", "").strip() for o in options.all_inner_texts()]  # gradio's (hidden) tick mark
    assert listed == titles, (listed, titles)
    ui.shot("base_models")
    # Closed by a click elsewhere: Escape on a tab without an Interrupt button throws in the WebUI's own script.js
    ui.section("Dataset")
    expect(options.first).to_be_hidden()

    # A project with a Unicode name, three pictures, the dataset report
    ui.text("train_tools_new_project_name", PROJECT)
    ui.el("train_tools_create_project").click()
    ui.contains("train_tools_project_message", PROJECT)
    expect(ui.el("train_tools_project").locator("input")).to_have_value(PROJECT)
    ui.contains("train_tools_dataset_report", "No pictures yet")
    ui.shot("project_created")
    with page.expect_file_chooser() as chooser:  # the upload button's file dialog
        ui.el("train_tools_upload").click()
    chooser.value.set_files(pictures)
    ui.contains("train_tools_import_message", "3 pictures imported", timeout=60_000)
    ui.contains("train_tools_dataset_report", "3 pictures")
    ui.shot("uploaded")

    # The Settings page has our section
    ui.open_main_tab("Settings")
    section = page.locator("#settings .tab-nav button", has_text="Train Tools").first
    expect(section).to_be_attached(timeout=30_000)
    section.click()
    expect(page.locator("#settings_train_tools").first).to_be_visible()
    expect(page.locator("#setting_train_tools_default_preset").first).to_be_visible()
    ui.shot("settings")

    # Back to the tab: the progress poller (our script) runs while it is shown without errors
    ui.open_main_tab("Train Tools")
    page.wait_for_timeout(5_000)
    assert page.evaluate("() => typeof window.trainTools === 'object' && window.trainTools.poller !== null")
    ui.shot("back_on_tab")

    # "Use this checkpoint" hands its prompt to the WebUI's txt2img box through our script, and shows txt2img
    prompt = "<lora:tt_webui_check:0.8>, tt_dog"
    assert page.evaluate("(p) => window.trainTools.sendToTxt2img(p)", prompt) is True
    expect(page.locator("#txt2img_prompt textarea").first).to_have_value(prompt)
    expect(page.locator("#tab_txt2img").first).to_be_visible()
    expect(ui.el("train_tools_root")).to_be_hidden()
    assert page.evaluate("(p) => window.trainTools.sendToTxt2img(p)", prompt) is True
    expect(page.locator("#txt2img_prompt textarea").first).to_have_value(prompt)  # not added twice
    ui.shot("sent_to_txt2img")

    assert console.ours() == [], "\n".join(console.ours())
    others = [e for e in console.errors if e not in console.ours()]
    if others:  # the WebUI's own noise is reported, not failed on
        print(f"[{flavor}] console errors not from {OUR_SCRIPT}:\n" + "\n".join(others))


def test_a_short_training_run_inside_the_webui(server, artifacts, pictures, browser_page):
    """Three steps of the tiny checkpoint at 64 px, followed on the tab's progress (our script's poller presses
    "Refresh progress" while the tab is shown) until it says Finished."""
    page = browser_page
    console = Console(page)
    ui = WebUIPage(page, artifacts)
    ui.shots = 20  # numbered after the first test's screenshots
    page.goto(server.base + "/")
    page.wait_for_selector("#train_tools_root", state="attached", timeout=LOAD_TIMEOUT_MS)
    ui.open_main_tab("Train Tools")
    ui.text("train_tools_new_project_name", PROJECT + " train")
    ui.el("train_tools_create_project").click()
    ui.contains("train_tools_project_message", PROJECT + " train")
    expect(ui.el("train_tools_version").locator("input")).to_have_value("v1")
    # Dropped at once, while the new project's panels are still being filled (the WebUI's own drop handler must
    # not get it either: the drop stops at the zone)
    drop_files(page, ui.el("train_tools_upload"), [Path(p) for p in pictures])
    ui.shot("train_uploading")
    ui.contains("train_tools_import_message", "3 pictures imported", timeout=60_000)
    ui.contains("train_tools_dataset_report", "3 pictures")
    for elem_id, value in (("train_tools_pp_width", 64), ("train_tools_pp_height", 64), ("train_tools_repeats", 1)):
        ui.number(elem_id, value)
    ui.el("train_tools_preprocess").click()
    ui.contains("train_tools_preprocess_message", "3 training pictures", timeout=60_000)

    ui.section("Train")
    title = next(m["title"] for m in server.get("/sdapi/v1/sd-models") if CHECKPOINT_NAME in m["title"])
    ui.choose("train_tools_base_model", title)
    ui.choose("train_tools_vram", "24 GB")  # the 8 GB default would pick AdamW8bit: no GPU here
    expect(ui.el("train_tools_field_train_batch_size").locator("input")).to_have_value("6", timeout=15_000)
    for key, value in (("max_train_epochs", 1), ("network_dim", 4), ("network_alpha", 2), ("resolution", 64),
                       ("train_batch_size", 1)):
        ui.number(f"train_tools_field_{key}", value)
    ui.el("train_tools_advanced").locator(".label-wrap").first.click()
    for key, value in (("min_bucket_reso", 64), ("max_bucket_reso", 128)):
        ui.number(f"train_tools_field_{key}", value)
    ui.el("train_tools_field_auto_preview").locator("input").uncheck()
    ui.contains("train_tools_estimate", "3 steps")
    ui.shot("train_form")
    ui.el("train_tools_train").click()
    expect(ui.el("train_tools_train_message")).not_to_be_empty(timeout=30_000)
    ui.shot("train_pressed")
    marked = [t.strip() for t in page.locator("[id^=train_tools_error_]").all_inner_texts() if t.strip()]
    assert "Training starts now" in ui.el("train_tools_train_message").inner_text(), marked
    ui.contains("train_tools_progress_status", "Finished", timeout=300_000)
    assert "step 3 of 3" in ui.el("train_tools_progress_status").inner_text()
    ui.shot("trained")
    assert console.ours() == [], "\n".join(console.ours())
