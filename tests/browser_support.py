"""What both browser tests (the standalone app, the tab inside a real WebUI) do the same way."""
from __future__ import annotations

import base64
from pathlib import Path

from playwright.sync_api import Page


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
