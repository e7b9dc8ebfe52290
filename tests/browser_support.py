"""What both browser tests (the standalone app, the tab inside a real WebUI) do the same way."""
from __future__ import annotations

import base64
from pathlib import Path

from playwright.sync_api import Page, expect


def drop_files(page: Page, target, paths: list[Path]) -> None:
    """Drag files from the desktop onto ``target`` (a drop event carrying them, as the browser sends it)."""
    files = [[p.name, base64.b64encode(p.read_bytes()).decode("ascii")] for p in paths]
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer();
        for (const [name, data] of files) {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
        }
        return transfer;
    }""", files)
    target.dispatch_event("dragover", {"dataTransfer": transfer})
    target.dispatch_event("drop", {"dataTransfer": transfer})


class TabPage:
    """Small helpers over the tab's DOM, the same on gradio 3.41 and 4.x (an elem_id can sit on a wrapper and on
    the inner element: the first is taken). Screenshots are numbered into ``artifacts``."""

    def __init__(self, page: Page, artifacts: Path):
        self.page = page
        self.artifacts = artifacts
        self.shots = 0

    def el(self, elem_id: str):
        return self.page.locator(f"#{elem_id}").first

    def shot(self, name: str) -> None:
        self.shots += 1
        self.page.screenshot(path=str(self.artifacts / f"{self.shots:02d}_{name}.png"), full_page=True)

    def section(self, name: str) -> None:
        self.page.locator("#train_tools_sections .tab-nav button", has_text=name).first.click()

    def choose(self, elem_id: str, option: str) -> None:
        self.el(elem_id).locator("input").click()
        self.page.locator("ul.options li", has_text=option).first.click()

    def number(self, elem_id: str, value) -> None:
        box = self.el(elem_id).locator("input")
        box.fill(str(value))
        box.press("Tab")

    def text(self, elem_id: str, value: str) -> None:
        self.el(elem_id).locator("textarea").fill(value)

    def contains(self, elem_id: str, text, timeout: float = 30_000) -> None:
        expect(self.el(elem_id)).to_contain_text(text, timeout=timeout)
