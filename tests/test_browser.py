"""The tab end to end in headless Chromium (Debian's /usr/bin/chromium through Playwright's Python client), against
the standalone app (``python -m lib_trainer.app``) with the embedded tiny model, as a newcomer would use it:

create a project with a Unicode name → upload three pictures and a broken file (named in the report) →
preprocess at 64 px → caption (one caption by hand, the tag tools: the standalone host has no tagger) → pick the
tiny checkpoint and a preset, two epochs at 64 px through the Advanced bucket fields → Train → watch the progress
→ reload the page mid-training and find the run again → Stop → Resume → finished → the checkpoints listed →
a small preview grid → "Use this checkpoint" → "Keep only this one" (after its question).

A screenshot of each step goes to tests/artifacts/browser/ (kept when the test fails, to see where it stopped).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser_support import TabPage, drop_files
from tests.trainer_fixtures import write_picture

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
PROJECT = "可爱的狗 test"
START_TIMEOUT_S = 240
TRAIN_TIMEOUT_MS = 240_000
STEPS = 48  # 3 pictures × 8 repeats × 2 epochs at batch size 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the app exited:\n" + log.read_text(encoding="utf-8", errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError("the app did not start:\n" + log.read_text(encoding="utf-8", errors="replace")[-3000:])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The standalone app on a free loopback port with an empty workspace (so it offers the tiny model)."""
    root = tmp_path_factory.mktemp("browser")
    workspace = root / "ws"
    port = free_port()
    log = root / "app.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRAIN_TOOLS_LANG", None)
    with open(log, "wb") as out:
        # the random tiny model: the flow in minutes on 2 cores (the toy model's quality is bench/quality.py's)
        process = subprocess.Popen([sys.executable, "-m", "lib_trainer.app", "--workspace", str(workspace),
                                    "--port", str(port), "--embedded", "tiny"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, process, log)
        yield {"url": url, "workspace": workspace, "root": root, "log": log}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        stop_trainers(workspace)


def stop_trainers(workspace: Path) -> None:
    """Trainers outlive the app by design (the next start reattaches); a test must not leave one behind."""
    import json

    for state_file in workspace.glob("projects/*/versions/*/version.json"):
        pid = json.loads(state_file.read_text(encoding="utf-8")).get("pid")
        if pid and psutil.pid_exists(pid):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def pictures(app):
    folder = app["root"] / "pictures"
    for i in range(3):  # no captions: they are written in the tab
        write_picture(folder / f"dog_{i:02d}.png", (128, 112), seed=i)
    (folder / "broken.png").write_bytes(b"this is text, not a picture")
    return sorted(str(p) for p in folder.glob("*.png"))


@pytest.fixture()
def page(app):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


class Tab(TabPage):
    """The standalone app's tab, with the progress readout."""

    def __init__(self, page: Page):
        super().__init__(page, ARTIFACTS)

    def status(self) -> str:
        return self.el("train_tools_progress_status").inner_text()

    def step(self) -> int:
        found = re.search(r"step (\d+) of", self.status())
        return int(found.group(1)) if found else -1

    def wait_step_above(self, step: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = self.step()
            if now > step:
                return now
            time.sleep(0.5)
        raise AssertionError(f"no progress past step {step}: {self.status()!r}")


def test_a_newcomer_trains_a_lora_in_the_browser(app, pictures, page):
    tab = Tab(page)
    page.goto(app["url"])
    page.wait_for_selector("#train_tools_project", timeout=60_000)
    tab.shot("opened")

    # A project with a Unicode name
    tab.text("train_tools_new_project_name", PROJECT)
    tab.el("train_tools_create_project").click()
    tab.contains("train_tools_project_message", PROJECT)
    expect(tab.el("train_tools_project").locator("input")).to_have_value(PROJECT)
    expect(tab.el("train_tools_version").locator("input")).to_have_value("v1")
    tab.contains("train_tools_dataset_report", "No pictures yet")
    tab.shot("project_created")

    # Upload (the button's file dialog): three pictures and a broken file, which the report names
    with page.expect_file_chooser() as chooser:
        tab.el("train_tools_upload").click()
    chooser.value.set_files(pictures)
    tab.contains("train_tools_import_message", "broken.png", timeout=60_000)
    tab.contains("train_tools_import_message", "3 pictures imported")
    tab.contains("train_tools_dataset_report", "3 pictures")
    tab.shot("uploaded")

    # Preprocess at 64 px. Eight repeats: 48 steps in all, so that the run is still going when the page is
    # reloaded and stopped even on a quiet machine (the tiny model trains a few steps a second there).
    tab.number("train_tools_pp_width", 64)
    tab.number("train_tools_pp_height", 64)
    tab.number("train_tools_repeats", STEPS // 6)
    tab.el("train_tools_preprocess").click()
    tab.contains("train_tools_preprocess_message", "3 training pictures", timeout=60_000)
    thumbnails = page.locator("#train_tools_gallery .thumbnail-item")
    expect(thumbnails).to_have_count(3, timeout=30_000)
    tab.shot("preprocessed")

    # Captions: one by hand, then the tag tools (no tagger on this host, and the tab says so)
    tab.contains("train_tools_tagger_note", "by hand")
    thumbnails.first.click()
    tab.contains("train_tools_selected_picture", "Editing")
    tab.text("train_tools_caption", "dog, red background")
    tab.el("train_tools_save_caption").click()
    tab.contains("train_tools_captions_message", "Saved")
    tab.text("train_tools_trigger_word", "tt_dog")
    tab.el("train_tools_set_trigger").click()
    tab.contains("train_tools_captions_message", "3 caption(s) changed")
    tab.text("train_tools_tags", "dog")
    tab.el("train_tools_add_tags").click()
    tab.contains("train_tools_captions_message", "Add dog")
    tab.contains("train_tools_tag_frequency", "tt_dog")
    expect(tab.el("train_tools_undo")).to_be_enabled()
    tab.shot("captioned")

    # The form: the tiny checkpoint, a preset and tier, two epochs at 64 px
    tab.section("Train")
    tab.choose("train_tools_base_model", "tiny test model")
    tab.choose("train_tools_preset", "Anime character")
    tab.choose("train_tools_vram", "24 GB")
    expect(tab.el("train_tools_field_train_batch_size").locator("input")).to_have_value("6", timeout=15_000)
    expect(tab.el("train_tools_field_trigger").locator("textarea")).to_have_value("tt_dog")
    for key, value in (("max_train_epochs", 3), ("network_dim", 4), ("network_alpha", 2), ("resolution", 64),
                       ("train_batch_size", 1)):
        tab.number(f"train_tools_field_{key}", value)
    tab.el("train_tools_advanced").locator(".label-wrap").first.click()
    tab.number("train_tools_field_min_bucket_reso", 64)
    tab.number("train_tools_field_max_bucket_reso", 128)
    tab.el("train_tools_field_auto_preview").locator("input").uncheck()
    tab.contains("train_tools_estimate", "3 pictures × 8 repeats = 24 picture uses per epoch · 3 epochs × 24 steps at "
                                         "batch 1 = 72 steps")
    tab.shot("form")

    # Train right after typing in a field (no Tab first): the first click must start the run with the typed value.
    # The field's change on blur re-renders the estimate, which sat above the Train button and moved it away from
    # the pointer between mousedown and mouseup, so the first click did nothing (seen 6 times by hand).
    tab.el("train_tools_field_max_train_epochs").locator("input").fill("2")
    tab.el("train_tools_train").click()
    tab.contains("train_tools_train_message", "Training starts now")
    tab.contains("train_tools_progress_status", "Training", timeout=30_000)
    first = tab.wait_step_above(0, 180)
    tab.shot("training")

    # A reload mid-training finds the run again (state comes from the version's files)
    page.reload()
    page.wait_for_selector("#train_tools_project", timeout=60_000)
    expect(tab.el("train_tools_project").locator("input")).to_have_value(PROJECT, timeout=30_000)
    tab.section("Train")
    tab.contains("train_tools_progress_status", "Training", timeout=30_000)
    assert tab.step() >= first
    expect(tab.el("train_tools_stop")).to_be_enabled(timeout=10_000)
    expect(page.locator("#train_tools_loss_chart img")).to_have_count(1, timeout=20_000)
    tab.shot("reloaded")

    # Stop (the trainer saves its state) and resume once
    tab.el("train_tools_stop").click()
    tab.contains("train_tools_train_message", "Stopping")
    tab.contains("train_tools_progress_status", "can be resumed", timeout=120_000)
    stopped_at = tab.step()
    assert 0 < stopped_at < STEPS, tab.status()
    expect(tab.el("train_tools_resume")).to_be_enabled(timeout=10_000)
    tab.shot("stopped")
    tab.el("train_tools_resume").click()
    tab.contains("train_tools_train_message", "Resuming")
    tab.contains("train_tools_progress_status", "Training", timeout=30_000)
    tab.wait_step_above(stopped_at, 180)
    tab.shot("resumed")
    tab.contains("train_tools_progress_status", "Finished", timeout=TRAIN_TIMEOUT_MS)
    assert f"step {STEPS} of {STEPS}" in tab.status()
    expect(tab.el("train_tools_train")).to_be_enabled(timeout=10_000)
    tab.shot("finished")

    # The checkpoints: one per epoch (and the one the stop wrote), with the suggestion as a hint
    tab.section("Checkpoints")
    tab.contains("train_tools_checkpoints_table", "(final)", timeout=30_000)
    table = tab.el("train_tools_checkpoints_table").inner_text()
    epochs = [line for line in table.splitlines() if re.search(r"\t[12]\t", line)]
    assert len(epochs) >= 2, table
    tab.contains("train_tools_recommendation", "hint, not a verdict")
    tab.shot("checkpoints")
    version = app["workspace"] / "projects" / PROJECT / "versions" / "v1"
    assert len(list((version / "checkpoints").glob("*.safetensors"))) >= 2

    # A small preview grid, then keep the suggested checkpoint
    tab.el("train_tools_preview_settings").locator(".label-wrap").first.click()
    tab.text("train_tools_preview_prompts", "dog, red background")
    tab.text("train_tools_preview_weights", "1")
    for key, value in (("steps", 4), ("width", 64), ("height", 64)):
        tab.number(f"train_tools_preview_{key}", value)
    tab.el("train_tools_preview").click()
    tab.contains("train_tools_preview_status", "Preview done", timeout=180_000)
    expect(tab.el("train_tools_checkpoints_message")).to_have_text("")  # no message left to outlive the status
    expect(page.locator("#train_tools_grid img").first).to_be_visible(timeout=30_000)
    expect(page.locator("#train_tools_checkpoint_gallery .thumbnail-item")).to_have_count(1, timeout=30_000)
    tab.shot("preview")
    tab.el("train_tools_use").click()
    tab.contains("train_tools_checkpoints_message", "Copied", timeout=60_000)
    expect(tab.el("train_tools_use_prompt").locator("textarea")).to_have_value(re.compile(r"^<lora:.+:0\.8>, tt_dog$"))
    tab.el("train_tools_keep_only").click()
    tab.contains("train_tools_keep_question", "other checkpoints")
    tab.shot("keep_only_question")
    tab.el("train_tools_keep_confirm").click()
    tab.contains("train_tools_checkpoints_message", "the others are in the trash", timeout=30_000)
    assert len(list((version / "checkpoints").glob("*.safetensors"))) == 1
    tab.shot("kept_one")


def noise_pictures(folder: Path, count: int, size: int) -> list[Path]:
    """Pictures that do not compress (so that sending them takes a while on a slow link)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        path = folder / f"noise_{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_uploads_on_a_slow_link_right_after_creating_a_project(app, page, tmp_path):
    """Pictures dropped at once after "Create project", sent over a slow link while the progress poll answers
    every few seconds, are all imported (gradio 3.41's File component lost such uploads without a word); and
    picking another project whose version is also "v1" shows that project's pictures."""
    tab = Tab(page)
    tab.shots = 40
    slow = noise_pictures(tmp_path / "noise", 3, 400)
    assert sum(p.stat().st_size for p in slow) > 1_200_000  # ≥ 4 s at 300 kB/s: the poll answers meanwhile
    page.goto(app["url"])
    page.wait_for_selector("#train_tools_project", timeout=60_000)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 20, "downloadThroughput": 10_000_000,
                                                  "uploadThroughput": 300_000})
    zone = tab.el("train_tools_drop_zone")
    for name in ("slow one", "slow two"):  # the second: a new "v1" after a "v1"
        tab.text("train_tools_new_project_name", name)
        tab.el("train_tools_create_project").click()
        tab.contains("train_tools_project_message", name)
        drop_files(page, tab.el("train_tools_upload"), slow)
        expect(zone).to_have_attribute("data-train-tools-note", "Uploading 3 files…", timeout=5_000)
        page.wait_for_timeout(1_500)  # still sending (≥ 4 s): the panels' refresh ticking meanwhile leaves the note
        expect(zone).to_have_attribute("data-train-tools-note", "Uploading 3 files…", timeout=100)
        tab.shot("slow_upload_" + name.split()[1])
        tab.contains("train_tools_import_message", "3 pictures imported", timeout=60_000)
        tab.contains("train_tools_dataset_report", "3 pictures")
        expect(zone).not_to_have_attribute("data-train-tools-note", re.compile(".*"))
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": -1})
    for name in ("slow one", "slow two"):
        source = app["workspace"] / "projects" / name / "versions" / "v1" / "dataset" / "source"
        assert sorted(p.name for p in source.glob("*.png")) == ["noise_0.png", "noise_1.png", "noise_2.png"]

    # A project without pictures, then back to one with: both are "v1", the panels follow the project
    tab.text("train_tools_new_project_name", "empty one")
    tab.el("train_tools_create_project").click()
    tab.contains("train_tools_dataset_report", "No pictures yet")
    tab.choose("train_tools_project", "slow one")
    tab.contains("train_tools_dataset_report", "3 pictures")
    tab.shot("picked_back")

    # Regularization pictures: a class, then pictures dropped on their own zone
    tab.el("train_tools_reg").locator(".label-wrap").first.click()
    tab.contains("train_tools_reg_status", "No regularization pictures")
    tab.text("train_tools_reg_class", "dog")
    drop_files(page, tab.el("train_tools_reg_upload"), slow[:2])
    tab.contains("train_tools_reg_import_message", "2 pictures imported", timeout=60_000)
    tab.contains("train_tools_reg_status", '2 regularization pictures of "dog" (repeats: 1')
    expect(tab.el("train_tools_reg_drop_zone")).not_to_have_attribute("data-train-tools-note", re.compile(".*"))
    reg = app["workspace"] / "projects" / "slow one" / "versions" / "v1" / "dataset" / "reg" / "1_dog"
    assert sorted(p.name for p in reg.glob("*.png")) == ["noise_0.png", "noise_1.png"]
    tab.shot("regularization")
