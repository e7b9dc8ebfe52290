"""Preview grids: one labelled picture per prompt (rows = checkpoints, columns = weights and the reference), built
from the manifest, split into pages when tall, with a PNG text chunk describing its layout.

```
previews/grid-01.png                  the labelled grid of prompt 1 (+ grid-01-page1.png … when it is tall)
```
Runs inside the WebUI process: standard library and Pillow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from PIL import Image, ImageDraw

from lib_trainer.common.i18n import tr
from lib_trainer.preview.cells import (PreviewBusy, PreviewCell, load_manifest, lora_cell, manifest_path,
                                       prompt_number, reference_cell, save_png, valid_record, version_lock,
                                       weight_text, write_manifest)
from lib_trainer.preview.text import TextRenderer
from lib_trainer.projects import CheckpointFile, Version

PAGE_ROWS = 10  # rows of one grid page
GRID_CELL_MAX = 512  # cells larger than this are scaled down in grids (the cell files keep their size)
FULL_GRID_MAX_PIXELS = 40_000_000  # the one-piece grid shrinks its cells further to stay below this
GRID_INFO_KEY = "train_tools"  # the PNG text chunk of a grid holding its JSON description


@dataclass
class GridFiles:
    prompt_index: int
    prompt: str
    path: Path  # the whole grid
    pages: List[Path]  # the same rows split into pages of PAGE_ROWS (empty when one page holds them all)


def checkpoint_label(ckpt: Union[CheckpointFile, Dict[str, Any]], name: str = "", suggested: bool = False) -> List[str]:
    """The row label of a checkpoint: "epoch N · step S", plus a "final" line for the last one and a "★ suggested"
    line for the one the held-out score suggests (checkpoints.recommend)."""
    get = ckpt.get if isinstance(ckpt, dict) else lambda k: getattr(ckpt, k)
    epoch, step = get("epoch"), get("step")
    if epoch is not None and step is not None:
        lines = [tr("epoch {epoch} · step {step}", epoch=epoch, step=step)]
    elif epoch is not None:
        lines = [tr("epoch {epoch}", epoch=epoch)]
    else:
        lines = [name or (ckpt.name if isinstance(ckpt, CheckpointFile) else "?")]
    if get("final"):
        lines.append(tr("final"))
    if suggested:
        lines.append("★ " + tr("suggested"))
    return lines


def _suggested_checkpoint(version: Version) -> Optional[str]:
    from lib_trainer.checkpoints.recommend import recommend

    try:
        return recommend(version).best
    except (OSError, ValueError):
        return None


def grid_files(version: Version) -> List[GridFiles]:
    """The grids the last build wrote (those still on disk)."""
    manifest = load_manifest(version)
    found = []
    for entry in (manifest or {}).get("grids", []):
        path = version.previews_dir / entry["file"]
        if path.is_file():
            found.append(GridFiles(entry["prompt_index"], entry["prompt"], path,
                                   [version.previews_dir / p for p in entry.get("pages", [])]))
    return found


def settings_line(settings: Dict[str, Any], seed: int) -> str:
    return tr("seed {seed} · {sampler} · {steps} steps · CFG {cfg} · {width}×{height} · clip skip {clip_skip}",
              seed=seed, sampler=settings.get("sampler"), steps=settings.get("steps"),
              cfg=format(float(settings.get("cfg_scale", 0)), "g"), width=settings.get("width"),
              height=settings.get("height"), clip_skip=settings.get("clip_skip"))


def webui_parameters(prompt: str, settings: Dict[str, Any], seed: int) -> str:
    """The WebUI's infotext for the grid's settings (what "PNG Info" shows and "Send to txt2img" reads)."""
    lines = [prompt]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    params = [f"Steps: {settings.get('steps')}", f"Sampler: {settings.get('sampler')}",
              f"CFG scale: {format(float(settings.get('cfg_scale', 0)), 'g')}", f"Seed: {seed}",
              f"Size: {settings.get('width')}x{settings.get('height')}"]
    if int(settings.get("clip_skip") or 1) > 1:
        params.append(f"Clip skip: {settings['clip_skip']}")
    lines.append(", ".join(params))
    return "\n".join(lines)


def build_grids(version: Version, *, font_path: Optional[str] = None, page_rows: int = PAGE_ROWS) -> List[GridFiles]:
    """One labelled grid per prompt of the manifest: rows = the version's checkpoints, columns = weights (+ the
    reference), cells not drawn or failed as labelled placeholders; tall grids also split into pages of
    ``page_rows`` rows. Raises PreviewBusy while a preview of the version runs (it rebuilds them at its end)."""
    lock = version_lock(version)
    if not lock.acquire(blocking=False):
        raise PreviewBusy(tr("A preview of \"{version}\" is already running.", version=version.key))
    try:
        manifest = load_manifest(version)
        return write_grids(version, manifest, font_path, page_rows) if manifest is not None else []
    finally:
        lock.release()


def write_grids(version: Version, manifest: Dict[str, Any], font_path: Optional[str],
                 page_rows: int = PAGE_ROWS) -> List[GridFiles]:
    previews = version.previews_dir
    checkpoints = version.checkpoints()
    weights = [float(w) for w in manifest.get("weights", [])]
    reference = bool(manifest.get("reference", True))
    settings = manifest.get("settings", {})
    seed = int(manifest["seed"])
    columns = [tr("weight {weight}", weight=weight_text(w)) for w in weights] + ([tr("no LoRA")] if reference else [])
    cell_size = _grid_cell_size(manifest, previews, settings)
    suggested = _suggested_checkpoint(version)
    results = []
    for p_index, prompt in enumerate(manifest.get("prompts", [])):
        ref_cell = None
        if reference:
            ref_cell = _grid_cell(manifest, reference_cell(p_index, prompt), previews)
        rows, labels = [], []
        for ckpt in checkpoints:
            row = [_grid_cell(manifest, lora_cell(ckpt, p_index, prompt, w), previews) for w in weights]
            if ref_cell is not None:
                row.append(ref_cell)
            rows.append(row)
            labels.append(checkpoint_label(ckpt, suggested=ckpt.name == suggested))
        header = [tr("Prompt {n}: {prompt}", n=p_index + 1, prompt=prompt or tr("(empty)"))]
        if settings.get("negative_prompt"):
            header.append(tr("Negative prompt: {negative}", negative=settings["negative_prompt"]))
        header.append(settings_line(settings, seed))
        header.append(tr("{version} · {count} checkpoints", version=version.key, count=len(checkpoints)))
        parameters = webui_parameters(prompt, settings, seed)
        base_info = {"version": version.key, "prompt_index": p_index, "prompt": prompt, "seed": seed,
                     "settings": settings, "weights": weights, "reference": reference}
        number = prompt_number(p_index)
        full_name = f"grid-{number}.png"
        scale = _full_grid_scale(cell_size, len(rows), len(columns))
        spec = GridSpec(header=header, columns=columns, rows=labels, cells=rows,
                        cell_size=(max(8, int(cell_size[0] * scale)), max(8, int(cell_size[1] * scale))),
                        final_rows={i for i, c in enumerate(checkpoints) if c.final})
        info = dict(base_info, rows=[c.name for c in checkpoints], page=None, pages=None)
        _write_grid(previews / full_name, spec, parameters, info, font_path)
        pages: List[str] = []
        if len(rows) > page_rows:
            count = math.ceil(len(rows) / page_rows)
            for k in range(count):
                lo, hi = k * page_rows, min(len(rows), (k + 1) * page_rows)
                page_header = header + [tr("page {page} of {pages}", page=k + 1, pages=count)]
                page_spec = GridSpec(header=page_header, columns=columns, rows=labels[lo:hi], cells=rows[lo:hi],
                                     cell_size=cell_size,
                                     final_rows={i - lo for i in spec.final_rows if lo <= i < hi})
                page_name = f"grid-{number}-page{k + 1}.png"
                page_info = dict(base_info, rows=[c.name for c in checkpoints[lo:hi]], page=k + 1, pages=count)
                _write_grid(previews / page_name, page_spec, parameters, page_info, font_path)
                pages.append(page_name)
        _remove_stale_pages(previews, number, len(pages))
        results.append({"prompt_index": p_index, "prompt": prompt, "file": full_name, "pages": pages})
    for stale in previews.glob("grid-*.png"):
        match = re.fullmatch(r"grid-(\d+)(?:-page\d+)?\.png", stale.name)
        if match and int(match.group(1)) > len(manifest.get("prompts", [])):
            stale.unlink(missing_ok=True)
    manifest["grids"] = results
    write_manifest(manifest_path(version), manifest)
    return [GridFiles(r["prompt_index"], r["prompt"], previews / r["file"], [previews / p for p in r["pages"]])
            for r in results]


def _remove_stale_pages(previews: Path, number: str, keep: int) -> None:
    for page in previews.glob(f"grid-{number}-page*.png"):
        match = re.fullmatch(rf"grid-{number}-page(\d+)\.png", page.name)
        if match and int(match.group(1)) > keep:
            page.unlink(missing_ok=True)


def _grid_cell(manifest: Dict[str, Any], cell: PreviewCell, previews: Path) -> "GridCell":
    record = valid_record(manifest, cell, previews)
    if record is None:
        return GridCell(status="missing", message=tr("not drawn yet"))
    if record.get("status") == "failed":
        return GridCell(status="failed", message=tr("failed: {error}", error=record.get("error", "")))
    return GridCell(image=previews / cell.file)


def _grid_cell_size(manifest: Dict[str, Any], previews: Path, settings: Dict[str, Any]) -> Tuple[int, int]:
    size = None
    for record in manifest.get("cells", {}).values():
        if record.get("status") == "ok" and (previews / record.get("file", "")).is_file():
            try:
                with Image.open(previews / record["file"]) as im:
                    size = im.size
                break
            except OSError:
                continue
    if size is None:
        size = (int(settings.get("width") or 512), int(settings.get("height") or 512))
    scale = min(1.0, GRID_CELL_MAX / max(size))
    return max(8, int(size[0] * scale)), max(8, int(size[1] * scale))


def _full_grid_scale(cell_size: Tuple[int, int], rows: int, cols: int) -> float:
    pixels = cell_size[0] * cell_size[1] * max(1, rows) * max(1, cols)
    return min(1.0, math.sqrt(FULL_GRID_MAX_PIXELS / pixels))


def _write_grid(path: Path, spec: "GridSpec", parameters: str, info: Dict[str, Any], font_path: Optional[str]) -> None:
    image, layout = render_grid(spec, font_path=font_path)
    info = dict(info, layout=dataclasses.asdict(layout))
    save_png(path, image, parameters, {GRID_INFO_KEY: json.dumps(info, ensure_ascii=False)})


def read_grid_info(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The JSON a grid PNG carries: version, prompt, seed, settings, weights, row checkpoint names, page, and its
    layout (so a click on the picture maps to a cell: see GridLayout.cell_at)."""
    with Image.open(path) as im:
        text = im.text.get(GRID_INFO_KEY) if hasattr(im, "text") else None
    return json.loads(text) if text else {}


# ---- drawing ----------------------------------------------------------------------------------------------------------

@dataclass
class GridCell:
    image: Union[Path, Image.Image, None] = None
    status: str = "ok"  # "ok" | "missing" | "failed"
    message: str = ""


@dataclass
class GridSpec:
    header: List[str]  # lines of text above the grid (each wrapped to the grid's width)
    columns: List[str]  # column labels
    rows: List[List[str]]  # each row's label lines
    cells: List[List[GridCell]]  # rows × columns
    cell_size: Tuple[int, int]
    final_rows: set = field(default_factory=set)  # rows marked as the final checkpoint


@dataclass
class GridLayout:
    width: int
    height: int
    header_height: int
    column_header_height: int
    label_width: int
    row_height: int
    cell_size: Tuple[int, int]
    gap: int
    font_size: int
    rows: int
    columns: int

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "GridLayout":
        values = dict(data)
        values["cell_size"] = tuple(values["cell_size"])
        return cls(**values)

    def cell_at(self, x: int, y: int) -> Optional[Tuple[int, int]]:
        """(row, column) of the cell image under a point of the grid, None outside every cell."""
        cw, _ = self.cell_size
        col = (x - self.label_width) // (cw + self.gap) if x >= self.label_width else -1
        row = (y - self.header_height - self.column_header_height) // (self.row_height + self.gap)
        if not (0 <= col < self.columns and 0 <= row < self.rows):
            return None
        x0, y0, x1, y1 = self.cell_box(row, col)
        return (row, col) if x0 <= x < x1 and y0 <= y < y1 else None

    def cell_box(self, row: int, col: int) -> Tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell's image in the grid."""
        cw, ch = self.cell_size
        x0 = self.label_width + col * (cw + self.gap)
        y0 = self.header_height + self.column_header_height + row * (self.row_height + self.gap)
        y0 += (self.row_height - ch) // 2
        return x0, y0, x0 + cw, y0 + ch


BACKGROUND = (255, 255, 255)
HEADER_BACKGROUND = (240, 241, 244)
TEXT = (20, 20, 24)
MUTED = (110, 110, 120)
PLACEHOLDER = (222, 223, 228)
FAILED = (250, 224, 224)
FINAL = (0, 110, 200)


def render_grid(spec: GridSpec, font_path: Optional[str] = None) -> Tuple[Image.Image, GridLayout]:
    """Draw a labelled grid: header text, column labels, row labels and the cells (images or placeholders)."""
    cw, ch = spec.cell_size
    n_rows, n_cols = len(spec.cells), len(spec.columns)
    font_size = max(12, min(40, round(cw / 20)))
    text = TextRenderer(font_size, font_path)
    pad = max(4, font_size // 2)
    gap = max(2, font_size // 6)
    line_h = text.line_height

    label_limit = max(cw, 10 * font_size)
    row_lines = [[w for line in label for w in text.wrap(line, label_limit)] for label in spec.rows]
    widest = max([text.width(line) for lines in row_lines for line in lines] or [0])
    label_w = min(widest, label_limit) + 2 * pad
    row_h = max([ch] + [len(lines) * line_h + pad for lines in row_lines])
    col_lines = [text.wrap(label, cw) for label in spec.columns]
    col_h = max([1] + [len(lines) for lines in col_lines]) * line_h + 2 * pad
    width = max(label_w + n_cols * (cw + gap) - gap + pad, 32 * font_size)
    header_lines: List[str] = []
    for line in spec.header:
        header_lines.extend(text.wrap(line, width - 2 * pad))
    if len(header_lines) > 24:
        header_lines = header_lines[:23] + ["…"]
    header_h = len(header_lines) * line_h + 2 * pad
    height = header_h + col_h + n_rows * (row_h + gap) - (gap if n_rows else 0) + pad
    layout = GridLayout(width=width, height=height, header_height=header_h, column_header_height=col_h,
                        label_width=label_w, row_height=row_h, cell_size=(cw, ch), gap=gap, font_size=font_size,
                        rows=n_rows, columns=n_cols)

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, header_h - 1), fill=HEADER_BACKGROUND)
    for i, line in enumerate(header_lines):
        text.draw(draw, (pad, pad + i * line_h), line, TEXT if i == 0 else MUTED)
    for c, lines in enumerate(col_lines):
        x0 = label_w + c * (cw + gap)
        for i, line in enumerate(lines):
            x = x0 + max(0, (cw - text.width(line)) // 2)
            text.draw(draw, (x, header_h + pad + i * line_h), line, TEXT)
    for r in range(n_rows):
        y_row = header_h + col_h + r * (row_h + gap)
        lines = row_lines[r] if r < len(row_lines) else []
        y = y_row + max(0, (row_h - len(lines) * line_h) // 2)
        final = r in spec.final_rows
        if final:
            draw.rectangle((0, y_row, max(2, pad // 2) - 1, y_row + row_h - 1), fill=FINAL)
        for i, line in enumerate(lines):
            text.draw(draw, (pad, y + i * line_h), line, FINAL if final and i == len(lines) - 1 else TEXT)
        for c in range(n_cols):
            cell = spec.cells[r][c] if c < len(spec.cells[r]) else GridCell(status="missing")
            box = layout.cell_box(r, c)
            _draw_cell(image, draw, text, cell, box, pad)
    return image, layout


def _draw_cell(image: Image.Image, draw: ImageDraw.ImageDraw, text: "TextRenderer", cell: GridCell,
               box: Tuple[int, int, int, int], pad: int) -> None:
    x0, y0, x1, y1 = box
    size = (x1 - x0, y1 - y0)
    if cell.status == "ok" and cell.image is not None:
        try:
            picture = cell.image if isinstance(cell.image, Image.Image) else Image.open(cell.image)
            try:
                picture = picture.convert("RGB")
                if picture.size != size:
                    picture = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
                image.paste(picture, (x0, y0))
                return
            finally:
                if not isinstance(cell.image, Image.Image):
                    picture.close()
        except OSError as exc:
            cell = GridCell(status="failed", message=tr("failed: {error}", error=str(exc)))
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=FAILED if cell.status == "failed" else PLACEHOLDER)
    inner = max(8, size[0] - pad)
    lines = text.wrap(cell.message or tr("not drawn yet"), inner)
    fit = max(1, (size[1] - pad) // text.line_height)
    if len(lines) > fit:
        lines = lines[: fit - 1] + [lines[fit - 1][: max(1, len(lines[fit - 1]) - 1)] + "…"]
    y = y0 + max(0, (size[1] - len(lines) * text.line_height) // 2)
    for i, line in enumerate(lines):
        x = x0 + max(0, (size[0] - text.width(line)) // 2)
        text.draw(draw, (x, y + i * text.line_height), line, MUTED)
