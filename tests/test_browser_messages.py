"""The Dataset and Captions steps' messages in headless Chromium against the standalone app: each message goes
with the state it tells of, and the dataset report follows the captions the trainer reads.

Create a project ("Next: add pictures below") → drop pictures (that message goes) → preprocess (the report asks
for the training pictures' captions, the repeats hint says the suggestion is not in use) → set a trigger word (the
report's caption advice goes) → another project, then back (the bar's message goes).
"""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from PIL import Image

from tests.browser_support import drop_files
from tests.test_browser import Tab, app, page  # noqa: F401 - the app and the page are fixtures


def test_messages_follow_the_state_they_tell_of(app, page, tmp_path):  # noqa: F811
    folder = tmp_path / "pictures"
    folder.mkdir()
    for n, colour in enumerate(((200, 40, 40), (40, 40, 200))):
        Image.new("RGB", (96, 96), colour).save(folder / f"thing_{n}.png")
    tab = Tab(page)
    tab.shots = 60
    page.goto(app["url"])
    page.wait_for_selector("#train_tools_project", timeout=60_000)

    tab.text("train_tools_new_project_name", "messages")
    page.wait_for_timeout(500)
    tab.el("train_tools_create_project").click()
    tab.contains("train_tools_project_message", "Next: add pictures below")
    tab.contains("train_tools_repeats_hint", "Not in use yet")
    drop_files(page, tab.el("train_tools_upload"), sorted(Path(folder).glob("*.png")))
    tab.contains("train_tools_import_message", "2 pictures imported", timeout=60_000)
    expect(tab.el("train_tools_project_message")).to_have_text("", timeout=10_000)
    tab.contains("train_tools_dataset_report", "2 pictures have no caption")
    tab.shot("messages_imported")

    tab.number("train_tools_pp_width", 64)
    tab.number("train_tools_pp_height", 64)
    tab.el("train_tools_preprocess").click()
    tab.contains("train_tools_preprocess_message", "2 training pictures", timeout=60_000)
    tab.contains("train_tools_dataset_report", "0 of the 2 training pictures have a caption")
    tab.contains("train_tools_dataset_report", "2 training pictures have no caption")
    tab.contains("train_tools_repeats_hint", "A suggestion only: the training pictures (10_messages) use 10 repeats")

    # the Captions step refreshes after Preprocess (its gallery fills): a refresh landing after the typing would put
    # the stored (empty) trigger word back
    expect(page.locator("#train_tools_gallery .thumbnail-item")).to_have_count(2, timeout=30_000)
    tab.text("train_tools_trigger_word", "sks_thing")
    page.wait_for_timeout(500)  # the typed value reaches gradio's state (a click at once can race it: the lead's bug)
    tab.el("train_tools_set_trigger").click()
    tab.contains("train_tools_captions_message", "2 caption(s) changed")
    tab.contains("train_tools_dataset_report", "2 of the 2 training pictures have a caption (100%)")
    expect(tab.el("train_tools_dataset_report")).not_to_contain_text("no caption")
    tab.shot("messages_captioned")

    tab.text("train_tools_new_project_name", "messages two")
    page.wait_for_timeout(500)
    tab.el("train_tools_create_project").click()
    tab.contains("train_tools_project_message", "messages two")
    tab.contains("train_tools_dataset_report", "No pictures yet")
    tab.choose("train_tools_project", "messages")
    tab.contains("train_tools_dataset_report", "2 of the 2 training pictures have a caption")
    expect(tab.el("train_tools_project_message")).to_have_text("", timeout=10_000)
    tab.shot("messages_picked_back")
