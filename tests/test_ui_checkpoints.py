"""The checkpoints panel: the list with scores and the suggested one (a hint, not a verdict), previews drawn in the
background, per-checkpoint galleries, "Use this checkpoint" and "Keep only this one" with its confirmation."""
import json

from lib_trainer.ui import checkpoints_panel
from tests.jobs_support import wait_for
from tests.ui_support import fake_checkpoint, make_context, value


def trained(tmp_path, scores=(1.20, 1.05, 1.10)):
    """A version with three checkpoints (epochs 1–3, the last one final) and their held-out scores."""
    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    version = ctx.version("dog", "v1")
    name = version.output_name
    paths = [fake_checkpoint(version.checkpoints_dir / f"{name}-00000{e}.safetensors", e, e * 6) for e in (1, 2)]
    paths.append(fake_checkpoint(version.checkpoints_dir / f"{name}.safetensors", 3, 18))
    with open(version.events_path, "w", encoding="utf-8") as fh:
        for epoch, (path, score) in enumerate(zip(paths, scores), 1):
            fh.write(json.dumps({"event": "checkpoint", "epoch": epoch, "step": epoch * 6, "path": str(path),
                                 "eval_loss": score, "eval_set": "held_out"}) + "\n")
    version.update(status="finished", settings={"trigger": "sks_dog"})
    return ctx, version


def test_every_checkpoint_is_listed_with_the_suggestion_marked_as_a_hint(tmp_path):
    ctx, version = trained(tmp_path)
    live = checkpoints_panel.live(ctx, "dog", "v1", None, None)
    note, table, chart, dropdown = live[:4]
    assert "hint, not a verdict" in note
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3
    assert "★" in rows[1] and "-000002" in rows[1] and "1.05" in rows[1]
    assert "(final)" in rows[2] and "| 3 | 18 |" in rows[2]
    assert chart is not None and chart.size[0] > 100
    names = dropdown["choices"]
    assert len(names) == 3 and value(dropdown) == names[1]  # the suggested one is picked first
    assert live[8].endswith("-e2")  # the LoRA name offered for it


def test_no_checkpoints_yet(tmp_path):
    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    live = checkpoints_panel.live(ctx, "dog", "v1", None, None)
    assert live[0] == "" and "No checkpoints yet" in live[1] and live[2] is None


def test_preview_runs_in_the_background_and_fills_grid_and_galleries(tmp_path):
    ctx, version = trained(tmp_path)
    settings = checkpoints_panel.preview_settings(ctx, version)
    settings[2] = "0.5, 1"  # weights
    settings[4], settings[6], settings[7] = 2, 64, 64  # steps, width, height
    settings[8] = "Euler a"
    assert checkpoints_panel.on_preview(ctx, "dog", "v1", None, False, *settings) == ""  # no error
    wait_for(lambda: not ctx.previews.get(version).running, 30, "the preview")
    status = ctx.previews.describe(version)
    assert "Preview done" in status, status
    assert len(ctx.host.requests) == 3 * 2 + 1  # 3 checkpoints × 2 weights + the column without LoRA
    assert all(r.prompt.startswith("sks_dog") for r in ctx.host.requests)
    live = checkpoints_panel.live(ctx, "dog", "v1", None, None)
    grid_choice, grid, gallery = live[4], live[5], live[6]
    assert value(grid_choice).startswith("Prompt 1") and len(grid) == 1 and grid[0][0].endswith(".png")
    assert len(gallery) == 2 and "weight 0.5" in gallery[0][1]
    assert checkpoints_panel.on_preview(ctx, "dog", "v1", value(live[3]), True, *settings) == ""
    wait_for(lambda: not ctx.previews.get(version).running, 30, "the second preview")
    assert len(ctx.host.requests) == 7  # everything was drawn already: nothing new


def test_preview_refuses_while_training_and_without_a_checkpoint(tmp_path):
    ctx, version = trained(tmp_path)
    settings = checkpoints_panel.preview_settings(ctx, version)
    version.update(status="running")
    assert "training" in checkpoints_panel.on_preview(ctx, "dog", "v1", None, False, *settings)
    version.update(status="finished")
    assert "Pick a checkpoint" in checkpoints_panel.on_preview(ctx, "dog", "v1", None, True, *settings)
    assert "No preview" in checkpoints_panel.on_stop_preview(ctx, "dog", "v1")


def test_use_this_checkpoint_copies_it_and_gives_the_prompt(tmp_path):
    ctx, version = trained(tmp_path)
    name = [c.name for c in version.checkpoints()][1]
    message, lora_name, prompt = checkpoints_panel.on_use(ctx, "dog", "v1", name, "my dog", 0.7, True, False)
    assert "Copied" in message and lora_name == "my dog"
    assert prompt == "<lora:my dog:0.7>, sks_dog" and ctx.host.sent == [prompt]
    assert (ctx.host.lora_dir() / "dog" / "my dog.safetensors").is_file()
    message, suggestion, prompt = checkpoints_panel.on_use(ctx, "dog", "v1", name, "my dog", 0.7, True, False)
    assert "already exists" in message and suggestion == "my dog-2" and prompt == ""
    message, _, _ = checkpoints_panel.on_use(ctx, "dog", "v1", name, "my dog", 0.7, False, True)
    assert "Copied" in message  # replacing was confirmed


def test_keep_only_this_one_asks_first_and_moves_the_others_to_the_trash(tmp_path):
    ctx, version = trained(tmp_path)
    keep = version.checkpoints()[1].name
    row, question = checkpoints_panel.on_keep_request(ctx, "dog", "v1", keep)
    assert row["visible"] is True and "2 other checkpoints" in question
    assert len(version.checkpoints()) == 3  # nothing moved before the confirmation
    row, message = checkpoints_panel.on_keep_confirm(ctx, "dog", "v1", keep)
    assert row["visible"] is False and "trash" in message
    assert ctx.host.forgotten == [version.path]  # the staged copies of the moved checkpoints go from the Lora list
    assert [c.name for c in version.checkpoints()] == [keep]
    assert len(ctx.workspace.trash()) == 1
    row, message = checkpoints_panel.on_keep_request(ctx, "dog", "v1", keep)
    assert row["visible"] is False and "no other checkpoint" in message


def test_a_tall_grid_is_shown_page_by_page(tmp_path):
    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    version = ctx.version("dog", "v1")
    for epoch in range(1, 13):
        fake_checkpoint(version.checkpoints_dir / f"{version.output_name}-{epoch:06d}.safetensors", epoch, epoch * 2)
    settings = checkpoints_panel.preview_settings(ctx, version)
    settings[0], settings[2], settings[4], settings[6], settings[7] = "dog", "1", 1, 16, 16
    settings[9] = False  # no column without LoRA
    assert checkpoints_panel.on_preview(ctx, "dog", "v1", None, False, *settings) == ""
    wait_for(lambda: not ctx.previews.get(version).running, 60, "the preview")
    assert "Preview done" in ctx.previews.describe(version), ctx.previews.describe(version)
    items = checkpoints_panel.grid_items(version, None)
    assert [caption for _, caption in items] == ["page 1 of 2", "page 2 of 2"]
