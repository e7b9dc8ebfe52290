"""The trainer's private dependencies: requirement syntax, the satisfied/missing decision, install.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from lib_trainer import deps
from lib_trainer.deps import Environment, Requirement

ROOT = Path(__file__).resolve().parents[1]
# Another spelling of this interpreter: makes deps ask it through a subprocess instead of in-process.
OTHER_SPELLING = Path(sys.executable).with_name("python3")
PYTHONS = [sys.executable] + ([str(OTHER_SPELLING)] if OTHER_SPELLING.exists() else [])


def fake_dist(root: Path, name: str, version: str, files: dict[str, str] | None = None) -> Path:
    info = root / f"{re.sub(r'[-.]', '_', name)}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nText.\n")
    record = [f"{info.name}/METADATA,,"]
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return info


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------------------------------------- parsing

def test_parse_forms() -> None:
    text = """
    # a comment line
    diffusers==0.29.2          # the trainer's own
    huggingface-hub>=0.23.2    # pin: 0.25.2
    urllib3 >= 1.26, <3        # pin: 2.2.3
    colorama ; platform_system == "Windows"  # pin: 0.4.6
    bitsandbytes==0.50.2       # when: torch-cuda  (AdamW8bit)
    """
    assert deps.parse_requirements(text) == [
        Requirement("diffusers", "==0.29.2", "", "0.29.2"),
        Requirement("huggingface-hub", ">=0.23.2", "", "0.25.2"),
        Requirement("urllib3", ">=1.26,<3", "", "2.2.3"),
        Requirement("colorama", "", 'platform_system == "Windows"', "0.4.6"),
        Requirement("bitsandbytes", "==0.50.2", "", "0.50.2", "torch-cuda"),
    ]
    assert Requirement("Lion_Pytorch", "==0.2.5", pin="0.2.5").key == "lion-pytorch"
    assert Requirement("lion-pytorch", "==0.2.5", pin="0.2.5").install_spec == "lion-pytorch==0.2.5"


@pytest.mark.parametrize("line", [
    "diffusers>=0.29",               # a range needs a pin
    "foo==1.0  # pin: 1.1",          # pin contradicts ==
    "foo>=2  # pin: 1.0",            # pin outside the range
    "foo[extra]==1.0",               # extras are not supported
    "foo==1.0  # when: moon-phase",  # unknown condition
    "foo==1.*",                      # a wildcard is not installable
    "foo=>1  # pin: 1",              # not a specifier
])
def test_parse_rejects(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        deps.parse_requirements("# header\n" + line)


def test_shipped_requirements() -> None:
    reqs = deps.read_requirements()
    keys = [r.key for r in reqs]
    assert len(keys) == len(set(keys))
    assert not {"torch", "torchvision"} & set(keys)
    assert {"diffusers", "lycoris-lora", "toml", "prodigyopt", "lion-pytorch", "tensorboardx", "bitsandbytes",
            "huggingface-hub", "safetensors", "importlib-metadata", "protobuf", "einops"} <= set(keys)
    by_key = {r.key: r for r in reqs}
    assert by_key["diffusers"].specifier == "==0.31.0"  # Forge pins it; FLUX.1 needs >= 0.31 (kohya LoRAs)
    assert by_key["bitsandbytes"].when == "torch-cuda"
    assert all(r.when == "" for r in reqs if r.key != "bitsandbytes")


def test_version_satisfies() -> None:
    assert deps.version_satisfies("0.25.2", ">=0.23.2")
    assert not deps.version_satisfies("0.22.0", ">=0.23.2")
    assert deps.version_satisfies("2.13.0+cpu", ">=2.4,<3")
    assert deps.version_satisfies("1.0.0rc1", ">=0.9")  # a host's pre-release counts
    assert not deps.version_satisfies("not a version", ">=1")
    assert deps.version_satisfies("anything", "")


# ---------------------------------------------------------------------------------------------- the decision

def test_unmet_pure() -> None:
    reqs = deps.parse_requirements("""
    a==1.0
    b>=2  # pin: 2.1
    c ; sys_platform == "nowhere"  # pin: 1
    d==3.0  # when: torch-cuda
    """)
    env = Environment({"a": "1.0", "b": "1.9", "c": None, "d": None}, {'sys_platform == "nowhere"': False}, None)
    assert [r.key for r in deps.unmet(reqs, env)] == ["b"]
    env = Environment({"a": "1.1", "b": "2.0", "c": None, "d": None}, {'sys_platform == "nowhere"': True}, "12.8")
    assert [r.key for r in deps.unmet(reqs, env)] == ["a", "c", "d"]


REQS = """
alpha-pkg==1.2.0
beta.pkg>=2.0,<3     # pin: 2.5
numpy>=1.17          # pin: 1.26.4
gamma ; python_version < "3"  # pin: 1.0
delta==0.1           # when: torch-cuda
"""


@pytest.mark.parametrize("python", PYTHONS)
def test_missing_requirements_with_fake_dists(tmp_path: Path, python: str) -> None:
    req_file = tmp_path / "reqs.txt"
    req_file.write_text(REQS)
    deps_dir = tmp_path / "deps"
    deps_dir.mkdir()

    def missing() -> list[str]:
        return [r.key for r in deps.missing_requirements(python, deps_dir, req_file)]

    # numpy comes from the host; gamma's marker is false; delta needs a CUDA torch and the host's is CPU.
    assert missing() == ["alpha-pkg", "beta-pkg"]
    fake_dist(deps_dir, "alpha-pkg", "1.2.0")
    fake_dist(deps_dir, "beta.pkg", "2.9")
    assert missing() == []
    # A copy in deps_dir comes first on the trainer's path, so it shadows the host's numpy.
    fake_dist(deps_dir, "numpy", "1.16.0")
    assert missing() == ["numpy"]
    (deps_dir / "torch").mkdir()
    (deps_dir / "torch" / "version.py").write_text("from typing import Optional\ncuda: Optional[str] = '12.8'\n")
    assert missing() == ["numpy", "delta"]


def test_out_of_range_versions(tmp_path: Path) -> None:
    req_file = tmp_path / "reqs.txt"
    req_file.write_text(REQS)
    fake_dist(tmp_path / "deps", "alpha_pkg", "1.1.0")
    fake_dist(tmp_path / "deps", "beta-pkg", "3.0")
    assert [r.key for r in deps.missing_requirements(sys.executable, tmp_path / "deps", req_file)] == [
        "alpha-pkg", "beta-pkg"]


def test_trainer_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/x/one", "/x/two"]))
    env = deps.trainer_env(sys.executable, tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), str(deps.EXTENSION_ROOT), "/x/one", "/x/two"]
    assert env["PYTHONNOUSERSITE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_default_deps_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(deps.DEPS_DIR_ENV, raising=False)
    assert deps.default_deps_dir() == ROOT / "trainer_deps"
    monkeypatch.setenv(deps.DEPS_DIR_ENV, str(tmp_path))
    assert deps.default_deps_dir() == tmp_path


# ---------------------------------------------------------------------------------------------- installing

def test_move_into_replaces_an_older_copy(tmp_path: Path) -> None:
    target, incoming = tmp_path / "deps", tmp_path / "incoming"
    fake_dist(target, "pkg", "1.0", {"pkg/__init__.py": "old", "pkg/gone.py": "old", "bin/tool": "old"})
    fake_dist(target, "other", "1.0", {"other.py": "kept", "bin/other-tool": "kept"})
    fake_dist(incoming, "pkg", "2.0", {"pkg/__init__.py": "new", "bin/tool": "new"})
    deps._move_into(incoming, target)
    assert listing(target) == sorted([
        "bin", "bin/other-tool", "bin/tool", "other.py", "other-1.0.dist-info", "other-1.0.dist-info/METADATA",
        "other-1.0.dist-info/RECORD", "pkg", "pkg/__init__.py", "pkg-2.0.dist-info", "pkg-2.0.dist-info/METADATA",
        "pkg-2.0.dist-info/RECORD"])
    assert (target / "pkg/__init__.py").read_text() == "new" and (target / "bin/tool").read_text() == "new"


def test_failed_install_leaves_deps_dir_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    req_file = tmp_path / "reqs.txt"
    req_file.write_text("alpha-pkg==1.2.0\n")
    deps_dir = tmp_path / "deps"
    fake_dist(deps_dir, "alpha-pkg", "1.1.0", {"alpha_pkg/__init__.py": ""})
    before = listing(deps_dir)
    lines: list[str] = []
    result = deps.install_missing(sys.executable, deps_dir, lines.append, req_file)
    assert not result.ok and result.installed == []
    assert "pip exited" in result.message and "alpha-pkg" in result.message
    assert any("alpha-pkg==1.2.0" in line for line in lines)
    assert listing(deps_dir) == before


def test_install_py_failures(tmp_path: Path) -> None:
    # By hand (arguments given): one line, exit status 1.
    proc = subprocess.run([sys.executable, str(ROOT / "install.py"), "--python", str(tmp_path / "no-python"),
                           "--deps-dir", str(tmp_path / "deps")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.startswith("[Train Tools] could not install") and proc.stdout.count("\n") == 1
    assert "the Train Tools tab will offer to retry" in proc.stdout
    # As the WebUI runs it (no arguments, output piped): the same line, but start-up goes on.
    env = dict(os.environ, TRAIN_TOOLS_DEPS_DIR=str(tmp_path / "deps"), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(tmp_path / "no-wheels"))
    proc = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("[Train Tools] could not install") and proc.stdout.count("\n") == 1


def test_check_trainer_imports_names_what_fails(tmp_path: Path) -> None:
    req_file = deps.REQUIREMENTS_FILE
    if not {"diffusers", "lycoris-lora"} <= {r.key for r in deps.missing_requirements(sys.executable, tmp_path,
                                                                                      req_file)}:
        pytest.skip("this Python has the trainer's packages installed in its own environment")
    ok, message = deps.check_trainer_imports(sys.executable, tmp_path)
    assert not ok
    assert "diffusers (ModuleNotFoundError" in message and "lycoris (" in message
    assert not re.search(r"\btorch \(", message)


def test_bitsandbytes_is_optional_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch = types.SimpleNamespace(version=types.SimpleNamespace(cuda="12.8"), __version__="2.13.0+cu128")
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    answer = deps._import_all(["torch", "json"])
    assert answer["cuda"] == "12.8" and "bitsandbytes" in answer["failures"] and not answer["failures"].keys() - {
        "bitsandbytes"}
    monkeypatch.setattr(deps, "_run_self", lambda *args: answer)
    ok, message = deps.check_trainer_imports(sys.executable, ROOT / "trainer_deps")
    assert ok and "CUDA 12.8" in message and "bitsandbytes unavailable, so no AdamW8bit" in message


# ---------------------------------------------------------------------------------------------- integration (PyPI)

def _freeze() -> bytes:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, check=True, env=env,
                          timeout=120).stdout


def _site_listing() -> list[str]:
    import site
    return sorted(name for d in site.getsitepackages() for name in os.listdir(d))


def _declared_dependencies(dist_dir: Path) -> set[str]:
    """Non-extra Requires-Dist keys of a dist-info whose markers hold here."""
    from packaging.requirements import Requirement as PEP508
    keys = set()
    for line in (dist_dir / "METADATA").read_text(encoding="utf-8").splitlines():
        if line.startswith("Requires-Dist:"):
            req = PEP508(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                keys.add(deps.canonical_name(req.name))
    return keys


# install.py run with every way of starting a process refused, reporting the heavy modules it imported. What makes
# the WebUI's start-up slow is pip (a process) or importing the trainer's packages, so that is what is checked,
# not a time.
FAST_PATH_GUARD = """
import json, os, runpy, subprocess, sys

def refuse(*args, **kwargs):
    raise RuntimeError(f"install.py started a process: {args[:1]}")

subprocess.Popen = os.system = os.fork = os.posix_spawn = os.posix_spawnp = os.execv = os.execve = refuse
sys.argv = [sys.argv[1], "--deps-dir", sys.argv[2]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    status = exc.code
heavy = ("torch", "diffusers", "transformers", "accelerate", "lycoris", "pip", "safetensors")
print(json.dumps({"status": status, "imported": sorted(m for m in heavy if m in sys.modules)}))
"""


def assert_fast_path(deps_dir: Path) -> None:
    """install.py with nothing missing: its one line, exit 0, no process started, none of the heavy packages
    imported."""
    import json

    proc = subprocess.run([sys.executable, "-c", FAST_PATH_GUARD, str(ROOT / "install.py"), str(deps_dir)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    assert lines[:-1] == ["[Train Tools] trainer dependencies present"], proc.stdout + proc.stderr
    assert json.loads(lines[-1]) == {"status": 0, "imported": []}, proc.stdout + proc.stderr


def test_install_py_fast_path_starts_no_process(tmp_path: Path) -> None:
    """The WebUI runs install.py at every start-up; with trainer_deps/ complete it only checks (see
    FAST_PATH_GUARD)."""
    assert_fast_path(ROOT / "trainer_deps")
    # the guard catches a process: an empty deps folder needs pip
    with pytest.raises(AssertionError, match="install.py started a process"):
        assert_fast_path(tmp_path / "empty_deps")


def test_install_py_into_a_fresh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deps_dir = tmp_path / "trainer_deps"
    freeze, site_listing = _freeze(), _site_listing()

    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "install.py"), "--deps-dir", str(deps_dir)],
                          capture_output=True, text=True, timeout=600)
    cold_s = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"\[Train Tools\] installed \d+ packages into .*\n", proc.stdout), proc.stdout
    assert _freeze() == freeze and _site_listing() == site_listing  # the host environment is untouched
    assert not list(deps_dir.glob(".incoming-*"))

    # Fast path: nothing missing, no pip (nor any other process) started, nothing heavy imported.
    assert_fast_path(deps_dir)

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"started a process: {args}")

    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", no_process)
        patch.setattr(subprocess, "run", no_process)
        result = deps.install_missing(sys.executable, deps_dir)
    assert result.ok and result.installed == [] and result.message == "trainer dependencies present"

    ok, message = deps.check_trainer_imports(sys.executable, deps_dir)
    assert ok, message
    print(f"cold install {cold_s:.1f}s; {message}")

    # The requirement file is a closure: what any listed package present here declares is listed too (or is torch).
    import site
    listed = {r.key for r in deps.read_requirements()} | {"torch"}
    dist_dirs = {}
    for root in [deps_dir, *map(Path, site.getsitepackages())]:
        for dist_dir in sorted(root.glob("*.dist-info")):
            dist_dirs.setdefault(deps.canonical_name(dist_dir.name.split("-")[0]), dist_dir)
    for key in listed - {"torch"}:
        if key in dist_dirs:
            assert _declared_dependencies(dist_dirs[key]) <= listed, dist_dirs[key].name
