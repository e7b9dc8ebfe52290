"""``python -m lib_trainer.cli``: every command, as a person (text) and a script (--json) would use it.

Real everything: the importer, preprocessing, caption tools, the job runner with its background worker, the
trainer on a tiny SD1 model (64 px, a few steps), the standalone host's preview grid and the pick into a Lora
folder. Commands that start the trainer run as subprocesses (the real CLI); the quick ones call main() in-process.
"""
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lib_trainer.cli.common import CKPT_DIR_ENV, LANG_ENV, LORA_DIR_ENV, WORKSPACE_ENV
from lib_trainer.cli.entry import main as cli_main
from tests.jobs_support import fake_python  # the runner tests' stand-in trainer, run as "--python"

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "可爱的狗"
# A tiny, fast run: 3 pictures × 1 repeat at batch 4 is one step per epoch.
FAST = ["--vram", "16", "--resolution", "64", "--set", "network_dim=4", "--set", "network_alpha=2",
        "--set", "learning_rate=1e-3"]


def _env(**extra):
    env = dict(os.environ)
    for key in (WORKSPACE_ENV, LANG_ENV, CKPT_DIR_ENV, LORA_DIR_ENV):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def run_cli(*args, timeout=240):
    """The real command line in a subprocess: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "lib_trainer.cli", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def json_lines(stdout):
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines, "no JSON on stdout"
    return lines


def call(capsys, *args):
    """main() in-process with --json: (exit code, the final document, every JSON line, stderr)."""
    code = cli_main(list(args) + ["--json"])
    captured = capsys.readouterr()
    lines = json_lines(captured.out)
    return code, lines[-1], lines, captured.err


def draw_pictures(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(200, 40, 40), (40, 70, 200), (40, 160, 60), (230, 200, 40)]
    for i in range(count):
        image = Image.new("RGB", (96, 96), colours[i % len(colours)])
        ImageDraw.Draw(image).ellipse((20, 20, 70, 70), fill=(170, 120, 70))
        image.save(folder / f"dog_{i}.png")
        (folder / f"dog_{i}.txt").write_text(f"dog, blue eyes, colour{i}", encoding="utf-8")


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    path = tmp_path_factory.mktemp("models") / "tiny-sd1.safetensors"
    write_tiny_checkpoint("sd1", path)
    return path


@pytest.fixture(scope="module")
def dataset_ws(tmp_path_factory):
    """A workspace with a project whose v1 holds 3 preprocessed, captioned 64 px pictures."""
    root = tmp_path_factory.mktemp("cli")
    pictures = root / "pictures"
    draw_pictures(pictures)
    ws = root / "ws"
    assert cli_main(["new", PROJECT, "--workspace", str(ws)]) == 0
    assert cli_main(["import", PROJECT, str(pictures), "--size", "64", "--repeats", "1", "--workspace", str(ws)]) == 0
    return ws


PREVIEW = ["--size", "64", "--steps", "2", "--weights", "0.5,1", "--prompt", "a dog"]


@pytest.fixture(scope="module")
def trained(dataset_ws, tiny_model):
    """v1 trained for two epochs through the real CLI (JSON progress), with a small preview grid drawn after it."""
    assert cli_main(["preview", f"{PROJECT}/v1", *PREVIEW, "--set-only", "--workspace", str(dataset_ws)]) == 0
    code, out, err = run_cli("train", PROJECT, "--workspace", str(dataset_ws), "--base", str(tiny_model),
                             "--epochs", "2", *FAST, "--preview", "--json")
    return dataset_ws, code, out, err


# ---------------------------------------------------------------------------------------------- help, usage

def test_help_is_instant_and_says_what_each_command_does(capsys):
    probe = ("import sys, lib_trainer.cli.entry as c; code = c.main(['train', '--help']); "
             "heavy = [m for m in ('torch', 'diffusers', 'PIL', 'numpy', 'psutil') if m in sys.modules]; "
             "print('HEAVY', heavy, code)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr

    assert cli_main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("new", "import", "caption", "train", "preview", "pick", "status", "list"):
        assert f"    {command} " in text
    expectations = {
        "new": "first version", "import": "import report", "caption": "tagger", "train": "Ctrl-C",
        "preview": "labelled grid", "pick": "Never overwrites", "status": "last events", "list": "versions",
    }
    for command, phrase in expectations.items():
        assert cli_main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert phrase in text and "--workspace" in text and "--json" in text, command


def test_usage_errors_exit_2(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert cli_main(["frobnicate"]) == 2
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    capsys.readouterr()
    code, doc, _, err = call(capsys, "train", PROJECT, "--set", "network_dim", "--workspace", ws)
    assert code == 2 and not doc["ok"] and "KEY=VALUE" in doc["error"]
    code, doc, _, _ = call(capsys, "train", PROJECT, "--set", "netwrok_dim=4", "--workspace", ws)
    assert code == 2 and "netwrok_dim" in doc["error"]
    code, doc, _, _ = call(capsys, "caption", PROJECT, "--undo", "--add", "x", "--workspace", ws)
    assert code == 2
    code, doc, _, _ = call(capsys, "pick", PROJECT, "--workspace", ws)  # no Lora folder known
    assert code in (1, 2) and not doc["ok"]


# ---------------------------------------------------------------------------------------------- new, list, status

def test_new_list_status(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    code, doc, _, _ = call(capsys, "new", PROJECT, "--workspace", ws)
    assert code == 0 and doc["project"] == PROJECT and doc["version"]["version"] == "v1"
    assert doc["version"]["status"] == "draft" and Path(doc["version"]["path"]).is_dir()

    code, doc, _, _ = call(capsys, "new", f"{PROJECT}/v2", "--from", "v1", "--workspace", ws)
    assert code == 0 and doc["version"]["cloned_from"] == "v1"
    code, doc, _, err = call(capsys, "new", PROJECT, "--workspace", ws)
    assert code == 1 and not doc["ok"] and "already exists" in doc["error"] and "error:" in err
    code, doc, _, _ = call(capsys, "new", "a/b/../c", "--workspace", ws)
    assert code == 1 and ".." in doc["error"]

    code, doc, _, _ = call(capsys, "list", "--workspace", ws)
    assert code == 0 and [p["name"] for p in doc["projects"]] == [PROJECT]
    assert [v["name"] for v in doc["projects"][0]["versions"]] == ["v1", "v2"]
    assert all(v["status"] == "draft" and v["checkpoints"] == 0 for v in doc["projects"][0]["versions"])

    code, doc, _, _ = call(capsys, "status", PROJECT, "--workspace", ws)  # the project's newest version
    assert code == 0 and doc["version"] == "v2" and doc["status"] == "draft" and doc["job"] is None
    code, doc, _, _ = call(capsys, "status", "--workspace", ws)
    assert code == 0 and doc["jobs"] == []
    code, doc, _, _ = call(capsys, "status", "nobody/v1", "--workspace", ws)
    assert code == 1 and "does not exist" in doc["error"]

    assert cli_main(["list", "--workspace", ws]) == 0
    assert "v2  draft  0 checkpoint(s)" in capsys.readouterr().out
    assert cli_main(["list", "--workspace", ws, "--lang", "zh_CN"]) == 0  # --lang anywhere, or $TRAIN_TOOLS_LANG
    assert "v2  草稿  0 个检查点" in capsys.readouterr().out
    assert cli_main(["--lang", "zh_CN", "list", "--workspace", str(tmp_path / "empty")]) == 0
    assert "还没有项目" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- import

def test_import_names_the_broken_file_and_imports_the_rest(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    pictures = tmp_path / "pictures"
    draw_pictures(pictures, count=3)
    (pictures / "broken.png").write_bytes(b"this is not a picture")
    extra = tmp_path / "extra.zip"
    draw_pictures(tmp_path / "zipped", count=4)
    with zipfile.ZipFile(extra, "w") as zf:
        zf.write(tmp_path / "zipped" / "dog_3.png", "more/dog_3.png")
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    capsys.readouterr()

    code, doc, lines, _ = call(capsys, "import", PROJECT, str(pictures), str(extra), "--size", "64", "--repeats", "2",
                               "--concept", "dog", "--workspace", ws)
    assert code == 0 and doc["ok"]
    items = {i["name"]: i for i in doc["report"]["items"]}
    assert items["broken.png"]["status"] == "skipped" and items["broken.png"]["message"]
    imported = [i for i in doc["report"]["items"] if i["kind"] == "picture" and i["status"] == "imported"]
    assert len(imported) == 4  # three from the folder, one from the archive
    assert doc["concept"] == {"name": "dog", "repeats": 2, "folder": doc["preprocess"]["folder"]}
    train = Path(doc["preprocess"]["folder"])
    assert train.name == "2_dog" and len(list(train.glob("*.png"))) == 4
    assert all(Image.open(p).size == (64, 64) for p in train.glob("*.png"))
    assert (train / "dog_0.txt").read_text(encoding="utf-8") == "dog, blue eyes, colour0"

    # As text: the broken file is named with its reason; a second import notices the duplicates.
    assert cli_main(["import", PROJECT, str(pictures), "--workspace", ws]) == 0
    text = capsys.readouterr().out
    assert "broken.png" in text and "already imported" in text
    code, doc, _, _ = call(capsys, "import", PROJECT, str(tmp_path / "missing"), "--workspace", ws)
    assert code == 1 and "missing" in doc["error"]


def test_import_regularization_pictures(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    draw_pictures(tmp_path / "women", count=2)
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    capsys.readouterr()
    code, doc, _, _ = call(capsys, "import", PROJECT, str(tmp_path / "women"), "--reg", "woman", "--workspace", ws)
    reg = Path(doc["regularization_dir"])
    assert code == 0 and doc["ok"] and reg.name == "1_woman" and reg.parent.name == "reg"
    assert sorted(p.name for p in reg.glob("*.png")) == ["dog_0.png", "dog_1.png"]
    assert "preprocess" not in doc  # not cropped: the trainer buckets them
    # Again with other repeats: the same folder, renamed
    code, doc, _, _ = call(capsys, "import", PROJECT, str(tmp_path / "women"), "--reg", "woman", "--repeats", "3",
                           "--workspace", ws)
    assert code == 0 and Path(doc["regularization_dir"]).name == "3_woman" and not reg.exists()
    code, doc, _, _ = call(capsys, "import", PROJECT, str(tmp_path / "women"), "--reg", " ", "--workspace", ws)
    assert code == 2 and "class" in doc["error"]


# ---------------------------------------------------------------------------------------------- caption

def test_caption_manual_tools_undo_and_no_tagger(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    draw_pictures(tmp_path / "pictures", count=3)
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    assert cli_main(["import", PROJECT, str(tmp_path / "pictures"), "--size", "64", "--repeats", "1",
                     "--concept", "dog", "--workspace", ws]) == 0
    capsys.readouterr()

    # The standalone host has no tagger: said plainly, exit 1, nothing changed.
    code, doc, _, err = call(capsys, "caption", PROJECT, "--workspace", ws)
    assert code == 1 and "needs the WebUI" in doc["error"] and "by hand" in doc["error"]
    assert cli_main(["caption", PROJECT, "--workspace", ws]) == 1
    assert "needs the WebUI" in capsys.readouterr().err

    code, doc, _, _ = call(capsys, "caption", PROJECT, "--set", "dog_1.png=a dog,  running , grass",
                           "--set", "dog_2=a dog, sitting", "--workspace", ws)
    assert code == 0
    assert doc["captions"]["1_dog/dog_1.png"] == "a dog, running, grass"
    assert doc["captions"]["1_dog/dog_2.png"] == "a dog, sitting"

    code, doc, _, _ = call(capsys, "caption", PROJECT, "--trigger", "sks_dog", "--remove", "blue eyes",
                           "--replace", "a dog=dog", "--add", "solo", "--workspace", ws)
    assert code == 0 and doc["trigger"] == "sks_dog"
    assert [e["action"] for e in doc["edits"]] == ["replace_tags", "remove_tags", "add_tags", "set_trigger_word"]
    assert doc["captions"] == {"1_dog/dog_0.png": "sks_dog, dog, colour0, solo",
                               "1_dog/dog_1.png": "sks_dog, dog, running, grass, solo",
                               "1_dog/dog_2.png": "sks_dog, dog, sitting, solo"}

    # Undo puts back the last edit (the trigger word); the version remembers the trigger for keep_tokens.
    code, doc, _, _ = call(capsys, "caption", PROJECT, "--undo", "--workspace", ws)
    assert code == 0 and len(doc["undo"]["restored"]) == 3
    assert doc["captions"]["1_dog/dog_0.png"] == "dog, colour0, solo"
    from lib_trainer.projects import Workspace

    settings = Workspace(ws).version(PROJECT, "v1").state()["settings"]
    assert settings["trigger"] == "sks_dog" and settings["keep_tokens"] == 1

    code, doc, _, _ = call(capsys, "caption", PROJECT, "--set", "nobody.png=x", "--workspace", ws)
    assert code == 1 and "nobody.png" in doc["error"]
    assert cli_main(["caption", PROJECT, "--list", "--workspace", ws]) == 0
    text = capsys.readouterr().out
    assert "1_dog/dog_1.png: dog, running, grass, solo" in text and "solo (3)" in text


# ---------------------------------------------------------------------------------------------- train

def test_train_two_epochs_with_json_progress(trained):
    ws, code, out, err = trained
    assert code == 0, out + err
    lines = json_lines(out)
    doc = lines[-1]
    kinds = [line.get("event") for line in lines[:-1]]
    assert kinds.count("start") == 1 and "done" in kinds and "error" not in kinds
    steps = [line for line in lines if line.get("event") == "step"]
    assert steps and all(isinstance(s["loss"], float) and s["epoch"] in (1, 2) for s in steps)
    jobs = [line["status"] for line in lines if line.get("event") == "job"]
    assert jobs[-1] == "done" and "running" in jobs
    assert [c["epoch"] for c in (line for line in lines if line.get("event") == "checkpoint")] == [1, 2]

    assert doc["ok"] and doc["command"] == "train" and doc["status"] == "finished"
    checkpoints = doc["checkpoints"]
    assert [c["epoch"] for c in checkpoints] == [1, 2] and checkpoints[-1]["final"]
    assert all(Path(c["path"]).is_file() for c in checkpoints)
    # --preview: the grid was drawn after training (by the background worker) before the command returned.
    assert doc["preview"]["error"] is None and len(doc["preview"]["grids"]) == 1
    assert Path(doc["preview"]["grids"][0]).is_file()

    code, out, _ = run_cli("status", f"{PROJECT}/v1", "--workspace", str(ws))  # as text
    assert code == 0 and f"{PROJECT}/v1: finished" in out and "Checkpoints (2):" in out and "done:" in out


def test_train_refuses_a_missing_base_model_with_the_field(dataset_ws, capsys):
    jobs_before = len(call(capsys, "status", "--workspace", str(dataset_ws), "--all")[1]["jobs"])
    code, doc, _, err = call(capsys, "train", f"{PROJECT}/v1", "--base", str(dataset_ws / "nope.safetensors"),
                             "--workspace", str(dataset_ws))
    assert code == 1 and not doc["ok"]
    assert [p["field"] for p in doc["problems"]] == ["pretrained_model_name_or_path"]
    assert "nope.safetensors" in doc["problems"][0]["message"]
    assert "--base: " in err and "pretrained_model_name_or_path" not in err  # the option, not the config key
    assert len(call(capsys, "status", "--workspace", str(dataset_ws), "--all")[1]["jobs"]) == jobs_before


def test_train_failure_reports_the_trainers_message(trained, tiny_model, capsys):
    ws = trained[0]
    assert cli_main(["new", f"{PROJECT}/zero", "--from", "v1", "--workspace", str(ws)]) == 0
    capsys.readouterr()
    code, out, err = run_cli("train", f"{PROJECT}/zero", "--workspace", str(ws), "--set", "learning_rate=0",
                             "--set", "unet_lr=0", "--set", "text_encoder_lr=0")
    assert code == 1
    assert "Training failed: no learning rate is above 0" in err, out + err
    assert "trainer.log" in err
    code, doc, _, _ = call(capsys, "status", f"{PROJECT}/zero", "--workspace", str(ws))
    assert doc["status"] == "failed" and "no learning rate" in doc["error"]["message"]


def _train_until_interrupted(ws, key, mode, interrupts):
    """``train KEY --json`` with the runner's stand-in trainer (``--python``), sending SIGINT (what Ctrl-C does)
    once training is under way, and again after more steps when ``interrupts`` is 2."""
    python = fake_python(Path(ws))
    proc = subprocess.Popen([sys.executable, "-m", "lib_trainer.cli", "train", key, "--workspace", str(ws),
                             "--python", python, "--no-preview", "--json"], cwd=ROOT, env=_env(FAKE_TRAINER_MODE=mode),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    lines, sent = [], 0
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            step = lines[-1].get("step") if lines[-1].get("event") == "step" else None
            if step is not None and sent < interrupts and step >= 1 + 10 * sent:
                proc.send_signal(signal.SIGINT)
                sent += 1
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, lines, proc.stderr.read()


def test_ctrl_c_stops_the_trainer_gracefully_then_resume_detached(trained):
    ws = trained[0]
    key = f"{PROJECT}/stopped"
    assert cli_main(["new", key, "--from", "v1", "--workspace", str(ws)]) == 0
    code, lines, err = _train_until_interrupted(ws, key, "slow", interrupts=1)
    assert code == 130, err
    doc = lines[-1]
    assert doc["status"] == "cancelled" and not doc["ok"]
    stopped_at = doc["checkpoints"][-1]
    assert "-step" in Path(stopped_at["path"]).name and Path(stopped_at["path"]).is_file()  # saved when it stopped
    assert "Stopping: the trainer saves a checkpoint" in err and "--resume" in err

    # --detach returns at once; status --follow shows the resumed run to its end (garbage lines and all).
    code, out, err = run_cli("train", key, "--resume", "--detach", "--workspace", str(ws), "--json",
                             "--python", fake_python(Path(ws)))  # FAKE_TRAINER_MODE unset: "garbage"
    doc = json_lines(out)[-1]
    assert code == 0 and doc["detached"] and doc["job"]["resume"].endswith("-state"), err
    proc = subprocess.run([sys.executable, "-m", "lib_trainer.cli", "status", key, "--follow", "--workspace",
                           str(ws), "--json"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc.stdout)[-1]["status"] == "finished"
    wait_gone(doc["worker_pid"])  # the background worker leaves once the queue is empty


def wait_gone(pid, timeout=30.0):
    import psutil

    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


def test_ctrl_c_twice_stops_a_stubborn_trainer_at_once(trained):
    ws = trained[0]
    key = f"{PROJECT}/stubborn"
    assert cli_main(["new", key, "--from", "v1", "--workspace", str(ws)]) == 0
    code, lines, err = _train_until_interrupted(ws, key, "stubborn", interrupts=2)
    assert code == 130, err
    assert lines[-1]["status"] == "cancelled"
    assert "Stopping at once." in err


# ---------------------------------------------------------------------------------------------- preview, pick

def trained_grid(trained):
    return json_lines(trained[2])[-1]["preview"]["grids"][0]


def test_preview_then_pick_never_overwrites(trained, torch_one_thread, tmp_path, capsys):
    ws = str(trained[0])
    assert trained[1] == 0
    v1 = f"{PROJECT}/v1"
    # The grid after training holds the reference and 2 checkpoints × 2 weights; a third weight draws 2 cells more.
    code, doc, lines, _ = call(capsys, "preview", v1, "--weights", "0.5,0.8,1", "--workspace", ws)
    assert code == 0 and doc["ok"] and doc["failed"] == []
    assert doc["total"] == 1 + 2 * 3 and doc["reused"] == 5 and doc["drawn"] == 2
    assert [line["done"] for line in lines if line.get("event") == "cell"] == [6, 7]
    # drawn as one of the workspace's preview tasks (a tab on the same workspace saw it and could stop it)
    record = json.loads((Path(ws) / "projects" / PROJECT / "versions" / "v1" / "previews" / "task.json")
                        .read_text(encoding="utf-8"))
    assert record["origin"] == "cli" and record["finished"] and (record["done"], record["total"]) == (7, 7)
    grid = Path(doc["grids"][0]["path"])
    assert grid.is_file() and grid.parent.name == "previews" and str(grid) == trained_grid(trained)
    assert Image.open(grid).size[0] > 4 * 64

    # A second run draws nothing new; the text output says where the grid is.
    assert cli_main(["preview", v1, "--workspace", ws]) == 0
    text = capsys.readouterr().out
    assert "0 image(s) drawn, 7 reused" in text and str(grid) in text

    lora_dir = tmp_path / "Lora"
    code, doc, _, _ = call(capsys, "pick", v1, "1", "--lora-dir", str(lora_dir), "--name", "cute dog",
                           "--weight", "0.7", "--workspace", ws)
    assert code == 0 and doc["ok"] and doc["checkpoint"].endswith("-000001")
    lora = Path(doc["lora"])
    assert lora == lora_dir / PROJECT / "cute dog.safetensors" and lora.is_file()
    assert Path(doc["preview"]).is_file() and doc["preview_source"] == "preview"
    assert doc["prompt"].startswith("<lora:cute dog:0.7>")
    card = json.loads(Path(doc["metadata"]).read_text(encoding="utf-8"))
    assert card["preferred weight"] == 0.7
    before = lora.read_bytes()

    code, doc, _, err = call(capsys, "pick", v1, "--lora-dir", str(lora_dir), "--name", "cute dog",
                             "--workspace", ws)
    assert code == 1 and "already exists" in doc["error"] and doc["suggestion"] == "cute dog-2"
    assert lora.read_bytes() == before  # the final checkpoint did not replace the epoch-1 copy

    code, doc, _, _ = call(capsys, "pick", v1, "last", "--lora-dir", str(lora_dir), "--workspace", ws)
    assert code == 0 and Path(doc["lora"]).is_file() and Path(doc["lora"]) != lora
    code, doc, _, _ = call(capsys, "pick", v1, "7", "--lora-dir", str(lora_dir), "--workspace", ws)
    assert code == 1 and "no checkpoint" in doc["error"]
