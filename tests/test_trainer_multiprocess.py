"""Several processes (the multi-GPU path) on the CPU: torchrun starts two trainers that talk over gloo, as
``accelerate launch --multi_gpu`` does over NCCL on GPUs.

Each process trains every other batch of an epoch and their gradients are averaged every step, so two processes
at batch size 1 must end with exactly the weights of one process at batch size 1 with two accumulation steps
(SGD and float32 files, so that nothing hides a difference). Both processes write the latent cache on disk at
once; the one-process run then reads it. Before the gradients were averaged explicitly, each process trained
alone and the file was the first process's half-trained network.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from lib_trainer import deps
from lib_trainer.trainer import schema
from tests.trainer_fixtures import load_lora, make_config, tiny_sd1  # noqa: F401 — fixture by name

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list, config, tmp_path: Path, name: str) -> list:
    path = tmp_path / f"{name}.toml"
    schema.save_config(config, path)
    env = dict(deps.trainer_env(sys.executable), OMP_NUM_THREADS="1")
    proc = subprocess.run(command + ["-m", "lib_trainer.trainer", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_two_processes_train_like_one_with_two_accumulation_steps(tiny_sd1, tmp_path):  # noqa: F811
    common = dict(max_train_epochs=2, train_batch_size=1, optimizer_type="SGD", learning_rate=0.05,
                  save_precision="float", save_every_n_epochs=1, cache_latents_to_disk=True)
    two = make_config(tmp_path, tiny_sd1, output_dir=str(tmp_path / "two"), **common)
    one = make_config(tmp_path, tiny_sd1, output_dir=str(tmp_path / "one"), gradient_accumulation_steps=2,
                      **common)
    events_two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                      "127.0.0.1", "--master_port", str(free_port())], two, tmp_path, "two")
    events_one = run([sys.executable], one, tmp_path, "one")

    # One stream of events (the main process), half the steps of a one-process run at the same batch size
    assert [e["event"] for e in events_two].count("start") == 1
    start = next(e for e in events_two if e["event"] == "start")
    assert start["total_steps"] == next(e for e in events_one if e["event"] == "start")["total_steps"] == 20
    steps_two = [e for e in events_two if e["event"] == "step"]
    assert [e["step"] for e in steps_two] == list(range(1, 21))
    # the logged loss is the mean over both processes' batches, as the one process logs it
    assert [e["loss"] for e in steps_two] == [e["loss"] for e in events_one if e["event"] == "step"]
    assert events_two[-1]["event"] == "done" and not events_two[-1]["interrupted"]

    a, _ = load_lora(tmp_path / "two" / "tt.safetensors")
    b, _ = load_lora(tmp_path / "one" / "tt.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    assert sorted(p.name for p in (tmp_path / "two").glob("*.safetensors")) == ["tt-000001.safetensors",
                                                                                "tt.safetensors"]
    assert torch.isfinite(torch.stack([v.float().abs().max() for v in a.values()])).all()


def test_a_stop_ends_every_process_at_the_same_step_with_a_checkpoint(tiny_sd1, tmp_path):  # noqa: F811
    """SIGINT to the launcher (it passes it on to both trainers, not at the same instant): both finish the same
    step, one checkpoint and a resumable state are written and `done` says interrupted; a process that left a
    step earlier would leave the other waiting in the next gradient exchange."""
    import signal

    config = make_config(tmp_path, tiny_sd1, output_dir=str(tmp_path / "out"), max_train_epochs=50)
    path = tmp_path / "long.toml"
    schema.save_config(config, path)
    env = dict(deps.trainer_env(sys.executable), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                                 "-m", "lib_trainer.trainer", str(path)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = []
    try:
        for line in launcher.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1]["event"] == "step" and events[-1]["step"] == 3:
                    launcher.send_signal(signal.SIGINT)
        launcher.wait(120)  # torchrun itself then exits with its own error: only the trainers' output matters
    finally:
        if launcher.poll() is None:
            launcher.kill()
    done = events[-1]
    assert done["event"] == "done" and done["interrupted"] is True, events[-3:]
    stopped_at = done["steps"]
    assert 3 <= stopped_at < 500
    checkpoint = tmp_path / "out" / f"tt-step{stopped_at:08d}.safetensors"
    assert done["checkpoints"] == [str(checkpoint)] and checkpoint.is_file()
    assert (tmp_path / "out" / f"tt-step{stopped_at:08d}-state" / "train_state.json").is_file()
