"""What the CLI says, as a new user reads it: problems named by the option that fixes them, the embedded model
by name, the Lora folder its help promises, hints that run when pasted, plain-text reports, and PROJECT/VERSION
said out loud. Quick: in-process except the pasted hints, which run in a shell as a person would."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lib_trainer.cli import common
from lib_trainer.cli.common import CKPT_DIR_ENV, LANG_ENV, LORA_DIR_ENV, WORKSPACE_ENV
from lib_trainer.cli.entry import main as cli_main
from lib_trainer.cli.output import Output
from lib_trainer.cli.parser import build_parser
from lib_trainer.common.i18n import set_language

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "cute dog's"  # a space and a quote: both need quoting in a shell


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in (WORKSPACE_ENV, LANG_ENV, CKPT_DIR_ENV, LORA_DIR_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./models here unless a test makes one
    yield
    set_language(None)


def draw(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (80, 80), (40 * i, 90, 160)).save(folder / f"dog_{i}.png")
        (folder / f"dog_{i}.txt").write_text(f"dog, colour{i}", encoding="utf-8")
    return folder


def workspace_with_pictures(tmp_path: Path) -> str:
    ws = str(tmp_path / "my ws")
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    assert cli_main(["import", PROJECT, str(draw(tmp_path / "pictures")), "--size", "64", "--repeats", "1",
                     "--workspace", ws]) == 0
    return ws


def command_lines(text: str) -> list:
    """The commands a text output suggests: its lines that start with the program."""
    return [line.strip() for line in text.splitlines() if " -m lib_trainer.cli " in line]


# ---------------------------------------------------------------------------------------------- item 1

def test_train_problems_are_named_by_the_option_that_fixes_them(tmp_path, capsys):
    ws = workspace_with_pictures(tmp_path)
    capsys.readouterr()
    assert cli_main(["train", PROJECT, "--workspace", ws]) == 1
    err = capsys.readouterr().err
    assert "pretrained_model_name_or_path" not in err
    line = next(line for line in err.splitlines() if line.startswith("--base: "))
    assert "No base model given" in line and ".safetensors or .ckpt" in line and '"embedded"' in line
    assert str(Path(ws).resolve() / "models" / "Stable-diffusion") in line  # where it looks

    assert cli_main(["train", PROJECT, "--base", "nothing-here", "--workspace", ws, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [(p["field"], p["option"]) for p in doc["problems"]] == [("pretrained_model_name_or_path", "--base")]
    assert '"nothing-here" is neither a file nor the name of a model' in doc["problems"][0]["message"]

    # A key without an option of its own is named as --set KEY=…; the bucket limits say how to let them follow.
    assert cli_main(["train", PROJECT, "--base", "embedded", "--resolution", "64", "--set", "min_bucket_reso=128",
                     "--set", "train_batch_size=0", "--workspace", ws]) == 1
    err = capsys.readouterr().err
    assert "--set min_bucket_reso=…: The smallest bucket side (128 px)" in err and "min_bucket_reso=null" in err
    assert "--set train_batch_size=…: The batch size must be at least 1." in err
    assert "\nmin_bucket_reso:" not in err and "\ntrain_batch_size:" not in err


def test_an_empty_dataset_says_which_command_fills_it(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    capsys.readouterr()
    assert cli_main(["train", PROJECT, "--base", "embedded", "--workspace", ws]) == 1
    err = capsys.readouterr().err
    assert "\ndataset:" not in "\n" + err and "has no training pictures yet" in err
    hint = command_lines(err)[0]
    assert shlex.split(hint)[3:] == ["import", f"{PROJECT}/v1", "FOLDER", "--workspace", ws]


# ---------------------------------------------------------------------------------------------- item 2

def _config_for(tmp_path, ws, base, capsys):
    from lib_trainer.cli.train_config import build_train_config
    from lib_trainer.projects import Workspace

    args = build_parser().parse_args(["train", PROJECT, "--base", base, "--workspace", ws])
    version = Workspace(ws).version(PROJECT, "v1")
    cfg, arch = build_train_config(args, Output(False), version)
    capsys.readouterr()
    return cfg, arch


def test_the_embedded_model_is_accepted_by_the_names_the_host_lists(tmp_path, capsys):
    from lib_trainer.hosts.standalone import EMBEDDED_TINY_TITLE

    ws = workspace_with_pictures(tmp_path)
    args = build_parser().parse_args(["train", PROJECT, "--workspace", ws])
    host = common.make_host(args, common.open_workspace(args))
    embedded = str(common.embedded_model(Path(ws)).absolute())
    listed = next(info for info in host.checkpoints() if info.path == embedded)  # the host offers it
    for name in ("embedded", listed.title, EMBEDDED_TINY_TITLE, Path(listed.path).name):
        cfg, arch = _config_for(tmp_path, ws, name, capsys)
        assert cfg.pretrained_model_name_or_path == listed.path and arch == "sd1", name
        assert Path(cfg.pretrained_model_name_or_path).is_file()  # the trainer can read it (written on first use)
        # the small model trains at its own size, not at SD1's 512 px
        assert cfg.resolution == f"{listed.resolution},{listed.resolution}"
    set_language("zh_CN")  # the title as the host lists it in Chinese
    zh_title = next(info.title for info in host.checkpoints(refresh=True) if info.path == embedded)
    cfg, _ = _config_for(tmp_path, ws, zh_title, capsys)
    assert cfg.pretrained_model_name_or_path == listed.path and zh_title != EMBEDDED_TINY_TITLE


def test_train_help_says_how_to_name_the_embedded_model(capsys):
    assert cli_main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert '"embedded"' in text and "no checkpoint file needed" in text


# ---------------------------------------------------------------------------------------------- item 3

def test_the_lora_folder_is_where_the_help_says(tmp_path, monkeypatch, capsys):
    ws = tmp_path / "ws"

    def folder(*argv):
        return common.lora_dir(build_parser().parse_args(["pick", PROJECT, "--workspace", str(ws), *argv]))

    # Outside a WebUI folder: the standalone app's <workspace>/models/Lora (no "say where the Lora folder is").
    assert folder() == (ws / "models" / "Lora").resolve()
    (tmp_path / "models" / "Lora").mkdir(parents=True)  # run from a WebUI's folder: its own models/Lora
    assert folder() == (tmp_path / "models" / "Lora").resolve()
    monkeypatch.setenv(LORA_DIR_ENV, str(tmp_path / "env"))
    assert folder() == tmp_path / "env"
    assert folder("--lora-dir", str(tmp_path / "given")) == tmp_path / "given"

    assert cli_main(["pick", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (f"default: ${LORA_DIR_ENV}, else ./models/Lora when it exists, as in a WebUI's folder, else "
            "<workspace>/models/Lora, as the standalone app") in text


def test_pick_copies_into_the_default_lora_folder_and_says_so(tmp_path, capsys):
    from safetensors.torch import save_file
    import torch

    from lib_trainer.projects import Workspace

    ws = str(tmp_path / "ws")
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    version = Workspace(ws).version(PROJECT, "v1")
    version.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)},
              str(version.checkpoints_dir / f"{version.output_name}-000001.safetensors"),
              metadata={"ss_epoch": "1", "ss_steps": "10"})
    capsys.readouterr()
    assert cli_main(["pick", PROJECT, "--workspace", ws]) == 0
    out = capsys.readouterr().out
    copied = Path(out.split(" to ", 1)[1].splitlines()[0])
    assert copied.is_file() and copied.parent == Path(ws).resolve() / "models" / "Lora" / PROJECT, out
    assert "(the default Lora folder; --lora-dir DIR" in out


# ---------------------------------------------------------------------------------------------- item 4

def _env():
    env = {k: v for k, v in os.environ.items() if k not in (WORKSPACE_ENV, LANG_ENV, CKPT_DIR_ENV, LORA_DIR_ENV)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def test_printed_commands_run_when_pasted_into_a_shell(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the program is printed as started from here (e.g. .venv/bin/python)
    ws = str(tmp_path / "my ws")
    assert cli_main(["new", PROJECT, "--workspace", ws, "--lang", "zh_CN"]) == 0
    hint = command_lines(capsys.readouterr().out)[0]
    words = shlex.split(hint)
    assert words[:3] == [os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..")
                         else words[0], "-m", "lib_trainer.cli"]
    assert words[3:] == ["import", f"{PROJECT}/v1", "FOLDER", "--workspace", ws, "--lang", "zh_CN"]
    pictures = draw(tmp_path / "my pictures")
    pasted = hint.replace("FOLDER", shlex.quote(str(pictures)))
    proc = subprocess.run(["bash", "-c", pasted], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "已导入" in proc.stdout or "导入" in proc.stdout  # --lang came along
    from lib_trainer.projects import Workspace

    assert len(list(Workspace(ws).version(PROJECT, "v1").source_dir.glob("*.png"))) == 2

    # An error's hint too: the project exists, so "new" says how to add a version, and that runs as printed.
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 1
    hint = command_lines(capsys.readouterr().err)[0]
    assert shlex.split(hint)[3:] == ["new", f"{PROJECT}/v2", "--workspace", ws]
    assert cli_main(shlex.split(hint)[3:]) == 0


def test_hints_leave_out_options_that_were_not_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path / "env ws"))
    assert cli_main(["new", "dog"]) == 0
    hint = command_lines(capsys.readouterr().out)[0]
    assert shlex.split(hint)[3:] == ["import", "dog/v1", "FOLDER"]


# ---------------------------------------------------------------------------------------------- item 5

def test_the_import_report_is_plain_text_in_a_terminal(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    pictures = draw(tmp_path / "pictures")
    (pictures / "broken.png").write_bytes(b"not a picture")
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    capsys.readouterr()
    assert cli_main(["import", PROJECT, str(pictures), "--size", "64", "--workspace", ws]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "broken.png" in line)
    assert line.startswith("  broken.png: ") and "`" not in out and "**" not in out

    from lib_trainer.dataset.importer import import_pictures

    report = import_pictures([pictures], tmp_path / "again")  # the tab keeps its Markdown
    assert "- `broken.png`: " in report.to_markdown() and "  broken.png: " in report.to_text()


# ---------------------------------------------------------------------------------------------- item 6

def test_project_slash_version_is_said_out_loud(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert cli_main(["new", "AC/DC", "--workspace", ws]) == 0
    out = capsys.readouterr().out
    assert 'Created project "AC" with version "DC"' in out
    assert '"AC/DC" reads as PROJECT/VERSION: project "AC", version "DC"; a project name cannot contain "/"' in out
    assert cli_main(["new", "AC/DC/live", "--workspace", ws]) == 2
    assert 'has more than one "/"' in capsys.readouterr().err
    for target in ("../x", "a/../b", "a/b/../c", "..", "x/.."):
        assert cli_main(["new", target, "--workspace", ws]) == 1, target
        assert '".."' in capsys.readouterr().err, target
    from lib_trainer.projects import Workspace

    assert [p.name for p in Workspace(ws).projects()] == ["AC"]


# ---------------------------------------------------------------------------------------------- item 8

def test_the_start_of_training_counts_picture_uses_not_pictures():
    import io

    from lib_trainer.cli.output import TrainProgress

    stream = io.StringIO()
    progress = TrainProgress(Output(False, stream=stream, errors=stream))
    progress.event({"event": "start", "device": "cpu", "images": 40, "reg_images": 0, "epochs": 1,
                    "total_steps": 20})
    progress.event({"event": "start", "device": "cpu", "images": 40, "reg_images": 3, "epochs": 2,
                    "total_steps": 80})
    first, second = stream.getvalue().splitlines()
    # 40 already holds the repeats: it is not "40 pictures × repeats"; one epoch is "1 epoch"
    assert first == "Training on cpu: 40 picture uses per epoch (pictures × repeats), 1 epoch, 20 steps."
    assert second == ("Training on cpu: 40 uses of the training pictures per epoch (pictures × repeats) and as many "
                      "of the regularization pictures (3 × repeats), 2 epochs, 80 steps.")


def test_import_says_how_to_train_next(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert cli_main(["new", PROJECT, "--workspace", ws]) == 0
    capsys.readouterr()
    assert cli_main(["import", PROJECT, str(draw(tmp_path / "pictures")), "--size", "64", "--workspace", ws]) == 0
    hint = command_lines(capsys.readouterr().out)[-1]
    assert shlex.split(hint)[3:] == ["train", f"{PROJECT}/v1", "--base", "MODEL", "--workspace", ws]
