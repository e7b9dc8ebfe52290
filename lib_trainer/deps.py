"""The trainer's private dependencies: what requirements-trainer.txt asks for, what a target Python already has,
and installing the rest into a directory that only the trainer subprocess puts on its path.

Standard library only (``packaging`` when importable): this runs inside the WebUI process, and it is also run by
file path inside the target Python (``--probe``, ``--imports``), which may be another environment entirely.
Nothing here installs, upgrades or removes anything in a Python's own environment.
"""
from __future__ import annotations

import ast
import csv
import importlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS_FILE = EXTENSION_ROOT / "requirements-trainer.txt"
TRAINER_MODULES = ("torch", "diffusers", "transformers", "safetensors", "lycoris", "lycoris.kohya", "toml",
                   "prodigyopt", "lion_pytorch", "tensorboardX", "accelerate", "PIL", "numpy")
WHEN_CONDITIONS = ("torch-cuda",)
_INCOMING = ".incoming-"  # pip's --target scratch dirs inside deps_dir; never importable, never scanned
_PROBE_TIMEOUT_S = 120
_IMPORT_TIMEOUT_S = 600
# Runs this file by path in the target Python, so nothing else of lib_trainer has to import there.
_BOOTSTRAP = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"

try:
    from lib_trainer.common.deps_dir import DEPS_DIR_ENV, default_deps_dir
except ImportError:  # run by file path (install.py at WebUI start-up): the leaf module beside us, the same way
    import importlib.util as _util

    _spec = _util.spec_from_file_location("train_tools_deps_dir", EXTENSION_ROOT / "lib_trainer" / "common" /
                                          "deps_dir.py")
    _leaf = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_leaf)
    DEPS_DIR_ENV, default_deps_dir = _leaf.DEPS_DIR_ENV, _leaf.default_deps_dir

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str], None]]


def _packaging():
    try:
        import packaging.markers, packaging.specifiers, packaging.version  # noqa: E401
        return packaging
    except ImportError:
        pass
    try:
        from pip._vendor import packaging as vendored  # present wherever pip is
        import pip._vendor.packaging.markers, pip._vendor.packaging.specifiers  # noqa: E401,F401
        return vendored
    except ImportError:
        return None


class DepsError(RuntimeError):
    """The target Python could not be asked, or answered something unusable."""


@dataclass(frozen=True)
class Requirement:
    name: str
    specifier: str = ""  # e.g. ">=0.23.2,<1"; "" accepts any version
    marker: str = ""     # PEP 508 environment marker, evaluated in the target Python
    pin: str = ""        # the version installed when missing or unsatisfied
    when: str = ""       # "" or one of WHEN_CONDITIONS

    @property
    def key(self) -> str:
        return canonical_name(self.name)

    @property
    def install_spec(self) -> str:
        return f"{self.name}=={self.pin}"

    def __str__(self) -> str:
        return self.name + self.specifier + (f"; {self.marker}" if self.marker else "")


@dataclass(frozen=True)
class Environment:
    """What a target Python (with deps_dir first on its path) has: the facts the satisfied/missing decision needs."""
    versions: dict[str, Optional[str]]  # canonical name -> installed version, None when absent
    markers: dict[str, bool]
    torch_cuda: Optional[str] = None    # torch.version.cuda of the torch it would import


@dataclass
class InstallResult:
    ok: bool
    installed: list[str]  # "name==version" put into deps_dir by this call
    deps_dir: Path
    message: str          # one line for people


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------- requirement file

_LINE = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*([^;]*?)\s*(?:;\s*(.*?))?\s*$")
_CLAUSE = re.compile(r"^(===|==|!=|~=|>=|<=|>|<)([0-9A-Za-z.*+!_-]+)$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")
_ANNOTATION = re.compile(r"\b(pin|when):\s*([^\s#()]+)")


def parse_requirements(text: str) -> list[Requirement]:
    """Parse the requirement syntax described at the top of requirements-trainer.txt; ValueError names the line."""
    requirements: list[Requirement] = []
    for number, raw in enumerate(text.splitlines(), 1):
        body, _, comment = raw.partition("#")
        if not body.strip():
            continue
        match = _LINE.match(body.strip())
        specifier = (match.group(2) or "").replace(" ", "") if match else ""
        if not match or (specifier and not all(_CLAUSE.match(c) for c in specifier.split(","))):
            raise ValueError(f"requirements line {number}: cannot parse {raw.strip()!r}")
        notes = dict(_ANNOTATION.findall(comment))
        exact = specifier[2:] if specifier.startswith("==") and "," not in specifier else ""
        pin = notes.get("pin") or exact
        if not _VERSION.match(pin) or (exact and pin != exact):
            raise ValueError(f"requirements line {number}: {match.group(1)} needs `==VERSION` or `# pin: VERSION`")
        if not version_satisfies(pin, specifier):
            raise ValueError(f"requirements line {number}: pin {pin} is outside {specifier}")
        when = notes.get("when", "")
        if when and when not in WHEN_CONDITIONS:
            raise ValueError(f"requirements line {number}: unknown `when: {when}` (known: {WHEN_CONDITIONS})")
        requirements.append(Requirement(match.group(1), specifier, match.group(3) or "", pin, when))
    return requirements


def read_requirements(path: PathLike = REQUIREMENTS_FILE) -> list[Requirement]:
    return parse_requirements(Path(path).read_text(encoding="utf-8"))


def version_satisfies(version: str, specifier: str) -> bool:
    if not specifier:
        return True
    packaging = _packaging()
    if packaging is None:  # last resort: exact pins still hold, ranges are trusted
        return all(not c.startswith("==") or c[2:] == version for c in specifier.split(","))
    try:
        return packaging.specifiers.SpecifierSet(specifier).contains(version, prereleases=True)
    except packaging.version.InvalidVersion:
        return False


# ---------------------------------------------------------------------------------------------- the decision

def applies(requirement: Requirement, env: Environment) -> bool:
    if requirement.marker and not env.markers.get(requirement.marker, True):
        return False
    return requirement.when != "torch-cuda" or bool(env.torch_cuda)


def unmet(requirements: Iterable[Requirement], env: Environment) -> list[Requirement]:
    """The requirements that apply to env and are absent or at a version outside their specifier."""
    result = []
    for r in requirements:
        version = env.versions.get(r.key)
        if applies(r, env) and (version is None or not version_satisfies(version, r.specifier)):
            result.append(r)
    return result


# ---------------------------------------------------------------------------------------------- asking a Python

def _is_current_python(python: str) -> bool:
    # No realpath: a venv's python is a symlink to the base interpreter, yet a different environment.
    return os.path.normcase(os.path.abspath(python)) == os.path.normcase(os.path.abspath(sys.executable))


def _pythonpath(deps_dir: PathLike) -> list[str]:
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [str(deps_dir), str(EXTENSION_ROOT), *existing]


def trainer_env(python: str = sys.executable, deps_dir: Optional[PathLike] = None) -> dict[str, str]:
    """The environment for a trainer subprocess of `python`: deps_dir first on its path, then this extension, then
    any PYTHONPATH; no user site-packages; `python`'s own directory first on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(_pythonpath(deps_dir or default_deps_dir()))
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if not _is_current_python(python):
        env.pop("PYTHONHOME", None)  # belongs to this interpreter, would break another one
    if os.path.dirname(python):
        env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    return env


def _metadata_version(info: Path) -> Optional[str]:
    """The Version header of a .dist-info/.egg-info (dir or PKG-INFO file), without importlib.metadata's parser."""
    for meta in (info / "METADATA", info / "PKG-INFO", info):
        try:
            with open(meta, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line[len("Version:"):].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return None


def _installed_versions(keys: Iterable[str], path: list[str]) -> dict[str, Optional[str]]:
    """Version of the first distribution of each key found along path (the copy an import would use)."""
    wanted = set(keys)
    found: dict[str, str] = {}
    for entry in path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            stem, _, suffix = name.rpartition(".")
            key = canonical_name(stem.split("-")[0])
            if suffix in ("dist-info", "egg-info") and key in wanted and key not in found:
                version = _metadata_version(Path(entry or ".", name))
                if version:
                    found[key] = version
    return {k: found.get(k) for k in wanted}


def _evaluate_marker(marker: str) -> bool:
    packaging = _packaging()
    return True if packaging is None else bool(packaging.markers.Marker(marker).evaluate())


def _torch_cuda(path: list[str]) -> Optional[str]:
    """torch.version.cuda of the first torch on path, read from torch/version.py without importing torch."""
    for entry in path:
        version_py = Path(entry or ".", "torch", "version.py")
        if version_py.is_file():
            break
    else:
        return None
    try:
        tree = ast.parse(version_py.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "cuda" and getattr(node, "value", None) is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return value if isinstance(value, str) and value else None
    return None


def _probe(keys: list[str], markers: list[str], path: list[str]) -> dict:
    return {"versions": _installed_versions(keys, path), "markers": {m: _evaluate_marker(m) for m in markers},
            "torch_cuda": _torch_cuda(path)}


def _run_self(python: str, args: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run this file in `python` with args; its answer is the last stdout line, as JSON."""
    try:
        proc = subprocess.run([python, "-c", _BOOTSTRAP, str(Path(__file__).resolve()), *args], env=env,
                              cwd=str(EXTENSION_ROOT), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise DepsError(f"cannot run {python}: {e}") from e
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DepsError(f"{python} exited with {proc.returncode}: {tail}") from None


def probe_environment(python: str = sys.executable, deps_dir: Optional[PathLike] = None,
                      requirements: Iterable[Requirement] = ()) -> Environment:
    requirements = list(requirements)
    deps_dir = deps_dir or default_deps_dir()
    keys = [r.key for r in requirements]
    markers = sorted({r.marker for r in requirements if r.marker})
    if _is_current_python(python):
        # What the trainer subprocess would see: not this process's sys.path, which the WebUI (or a test) extends.
        try:
            site_dirs = site.getsitepackages()
        except AttributeError:
            site_dirs = [p for p in sys.path if p.endswith("site-packages")]
        answer = _probe(keys, markers, _pythonpath(deps_dir) + site_dirs)
    else:
        answer = _run_self(python, ["--probe", json.dumps({"keys": keys, "markers": markers})],
                           trainer_env(python, deps_dir), _PROBE_TIMEOUT_S)
    return Environment(answer["versions"], answer["markers"], answer["torch_cuda"])


def missing_requirements(python: str = sys.executable, deps_dir: Optional[PathLike] = None,
                         requirements: PathLike = REQUIREMENTS_FILE) -> list[Requirement]:
    """Requirements that `python`, with deps_dir first on its path, lacks or has at an unsatisfying version."""
    wanted = read_requirements(requirements)
    return unmet(wanted, probe_environment(python, deps_dir, wanted))


# ---------------------------------------------------------------------------------------------- installing

def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # A user's pip config must not turn `--target` into an error or an install elsewhere.
    env.update(PIP_USER="0", PIP_REQUIRE_VIRTUALENV="0", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    for name in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT"):
        env.pop(name, None)
    return env


def _run_pip(python: str, target: Path, specs: list[str], say: Callable[[str], None]) -> None:
    # cwd is the empty scratch dir: `-m` puts the cwd first on sys.path, where nothing may shadow pip's imports.
    command = [python, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-warn-script-location",
               "--target", str(target), *specs]
    tail: deque[str] = deque(maxlen=30)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=_pip_env(), cwd=str(target.parent))
    except OSError as e:
        raise DepsError(f"cannot run {python}: {e}") from e
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                say(line)
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith("ERROR:")] or list(tail)[-1:] or ["no output"]
        raise DepsError(f"pip exited with {proc.returncode}: {errors[0][:300]}")


def _dist_infos(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for info in root.glob("*.dist-info"):
        found.setdefault(canonical_name(info.name[:-len(".dist-info")].split("-")[0]), []).append(info)
    return found


def _remove_dist(root: Path, info: Path) -> None:
    """Remove an installed distribution from a --target dir the way pip uninstall would: the files in its RECORD."""
    record = info / "RECORD"
    rows = list(csv.reader(record.read_text(encoding="utf-8").splitlines())) if record.is_file() else []
    dirs = set()
    for row in rows:
        path = (root / row[0]).resolve() if row else root
        if root.resolve() not in path.parents:
            continue  # e.g. ../../bin/ entries
        dirs.add(path.parent)
        path.unlink(missing_ok=True)
    shutil.rmtree(info, ignore_errors=True)
    for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)
        while folder != root.resolve() and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _merge(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    # Code first, metadata last: if this is interrupted, the probe finds no metadata and installs again.
    for entry in sorted(src.iterdir(), key=lambda p: p.name.endswith(".dist-info")):
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)  # dirs shared by several distributions (google/, bin/)
            continue
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def _move_into(incoming: Path, deps_dir: Path) -> None:
    """Move a finished pip --target tree into deps_dir, replacing older copies of the same distributions."""
    old = _dist_infos(deps_dir)
    for key in _dist_infos(incoming):
        for info in old.get(key, []):
            _remove_dist(deps_dir, info)
    _merge(incoming, deps_dir)


def _clean_stale_incoming(deps_dir: Path, older_than_s: float = 6 * 3600) -> None:
    for stale in deps_dir.glob(_INCOMING + "*"):
        if time.time() - stale.stat().st_mtime > older_than_s:
            shutil.rmtree(stale, ignore_errors=True)


def install_missing(python: str = sys.executable, deps_dir: Optional[PathLike] = None, progress: Progress = None,
                    requirements: PathLike = REQUIREMENTS_FILE) -> InstallResult:
    """Install what `python` lacks into deps_dir (pip --no-deps --target). Starts no pip when nothing is missing."""
    deps_dir = Path(deps_dir or default_deps_dir()).resolve()
    say = progress or (lambda line: None)
    try:
        missing = missing_requirements(python, deps_dir, requirements)
        if not missing:
            return InstallResult(True, [], deps_dir, "trainer dependencies present")
        specs = [r.install_spec for r in missing]
        say(f"installing into {deps_dir}: {' '.join(specs)}")
        deps_dir.mkdir(parents=True, exist_ok=True)
        _clean_stale_incoming(deps_dir)
        # pip writes into a scratch dir inside deps_dir (same file system, gitignored with it, not importable);
        # only a complete install is moved in, so a failed or interrupted pip leaves deps_dir as it was.
        with tempfile.TemporaryDirectory(prefix=_INCOMING, dir=deps_dir) as scratch:
            incoming = Path(scratch, "target")
            _run_pip(python, incoming, specs, say)
            _move_into(incoming, deps_dir)
        still = missing_requirements(python, deps_dir, requirements)
        if still:
            unsatisfied = ", ".join(map(str, still))
            return InstallResult(False, specs, deps_dir, f"still unsatisfied after install: {unsatisfied}")
        return InstallResult(True, specs, deps_dir, f"installed {len(specs)} packages into {deps_dir}")
    except (DepsError, OSError, ValueError, subprocess.SubprocessError) as e:
        return InstallResult(False, [], deps_dir, str(e))


# ---------------------------------------------------------------------------------------------- checking

def _import_all(modules: list[str]) -> dict:
    versions, failures = {}, {}

    def attempt(name: str) -> None:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", ""))
        except BaseException as e:  # a broken binary can raise anything, SystemExit included
            failures[name] = f"{type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}"

    for name in modules:
        attempt(name)
    cuda = getattr(getattr(sys.modules.get("torch"), "version", None), "cuda", None)
    if cuda:
        attempt("bitsandbytes")  # optional: only AdamW8bit needs it
    return {"versions": versions, "failures": failures, "cuda": cuda}


def check_trainer_imports(python: str = sys.executable, deps_dir: Optional[PathLike] = None) -> tuple[bool, str]:
    """Import every module the trainer needs in a fresh `python` with the trainer's environment."""
    modules = list(TRAINER_MODULES)
    try:
        answer = _run_self(python, ["--imports", json.dumps(modules)], trainer_env(python, deps_dir),
                           _IMPORT_TIMEOUT_S)
    except DepsError as e:
        return False, str(e)
    optional = answer["failures"].pop("bitsandbytes", None)
    if answer["failures"]:
        return False, "cannot import " + "; ".join(f"{m} ({why})" for m, why in answer["failures"].items())
    shown = ", ".join(f"{m} {v}" for m, v in answer["versions"].items() if v and "." not in m)
    note = f"; bitsandbytes unavailable, so no AdamW8bit ({optional})" if optional else ""
    return True, f"trainer modules import ({shown}; CUDA {answer['cuda'] or 'no'}){note}"


def _main(argv: list[str]) -> int:
    command, payload = argv[0], json.loads(argv[1])
    if command == "--probe":
        answer = _probe(payload["keys"], payload["markers"], sys.path)
    elif command == "--imports":
        answer = _import_all(payload)
    else:
        raise SystemExit(f"unknown command {command}")
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
