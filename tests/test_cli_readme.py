"""README's commands as written, in a fresh shell (only PATH and HOME, no PYTHONPATH), from the repository root:
the trainer's ``.venv/bin/python -m lib_trainer.trainer config.toml`` and the command-line examples."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fresh_env(home: Path, **extra: str) -> dict:
    """What `env -i bash -lc` would see with only PATH and HOME (plus the few variables a test needs)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    if os.environ.get("TRAIN_TOOLS_DEPS_DIR"):  # where the test run keeps the trainer's packages, if elsewhere
        env["TRAIN_TOOLS_DEPS_DIR"] = os.environ["TRAIN_TOOLS_DEPS_DIR"]
    env.update(extra)
    return env


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def bash_lines(text: str) -> list:
    """The command lines of the ```bash blocks in a README section (comments and blank lines left out)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def run_line(line: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)


def test_the_trainer_command_finds_its_private_dependencies(tmp_path):
    """Without the job runner's PYTHONPATH the trainer still imports diffusers from trainer_deps/ (it failed with
    "No module named 'diffusers'")."""
    from PIL import Image

    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    command = next(line for line in bash_lines(section("The trainer")) if "lib_trainer.trainer" in line)
    assert command.startswith(".venv/bin/python -m lib_trainer.trainer ") and command.endswith(" config.toml")
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv here (made by bash .ci/setup)")
    model = write_tiny_checkpoint("sd1", tmp_path / "tiny.safetensors")
    pictures = tmp_path / "train" / "1_dog"
    pictures.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(pictures / "dog.png")
    config = tmp_path / "config.toml"
    config.write_text(f'pretrained_model_name_or_path = "{model}"\ntrain_data_dir = "{pictures.parent}"\n'
                      f'output_dir = "{tmp_path / "out"}"\nresolution = "64,64"\nmax_train_steps = 1\n'
                      'network_dim = 4\nnetwork_alpha = 2\n', encoding="utf-8")
    proc = run_line(command.replace("config.toml", str(config)), fresh_env(tmp_path))
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 1
    assert (tmp_path / "out" / "last.safetensors").is_file()


def readme_pictures(home: Path) -> None:
    """What the README's example expects in ~/pictures: dog.zip and a folder other_dogs (one small picture each, so
    that training takes seconds)."""
    import zipfile

    from PIL import Image, ImageDraw

    pictures = home / "pictures"
    (pictures / "other_dogs").mkdir(parents=True)
    dog = pictures / "dog.png"
    image = Image.new("RGB", (96, 96), (40, 70, 200))
    ImageDraw.Draw(image).ellipse((20, 20, 70, 70), fill=(170, 120, 70))
    image.save(dog)
    with zipfile.ZipFile(pictures / "dog.zip", "w") as zf:
        zf.write(dog, "dog.png")
        zf.writestr("dog.txt", "dog, brown, blue background")
    dog.unlink()
    Image.new("RGB", (96, 96), (120, 120, 120)).save(pictures / "other_dogs" / "other.png")


def test_the_command_line_examples_run_as_written(tmp_path):
    """Each line of README's "The command line" block, in a fresh shell from the repository root; the workspace
    is chosen by $TRAIN_TOOLS_WORKSPACE so that the repository stays clean."""
    lines = bash_lines(section("The command line"))
    assert len(lines) == 7 and all(line.startswith(".venv/bin/python -m lib_trainer.cli ") for line in lines)
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv here (made by bash .ci/setup)")
    home = tmp_path / "home"
    readme_pictures(home)
    env = fresh_env(home, TRAIN_TOOLS_WORKSPACE=str(tmp_path / "ws"))
    outputs = []
    for line in lines:
        proc = run_line(line, env)
        outputs.append(proc.stdout)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    status = json.loads(outputs[-1].splitlines()[-1])
    assert status["status"] == "finished" and [c["epoch"] for c in status["checkpoints_on_disk"]] == [1, 2]
    picked = list((home / "webui" / "models" / "Lora" / "cute dog").glob("*.safetensors"))
    assert len(picked) == 1
    assert "Grid of prompt 1:" in outputs[4]  # --preview drew the grid after training
