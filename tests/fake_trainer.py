"""A stand-in for ``python -m lib_trainer.trainer CONFIG`` that misbehaves on purpose (runner tests only).

Launched through a wrapper used as ``RunnerSettings.python``: ``fake_trainer.py -m lib_trainer.trainer CONFIG``,
so its command line looks like the real trainer's. ``FAKE_TRAINER_MODE`` picks the behaviour:

- ``garbage``: prints binary junk, half JSON and non-event JSON to stdout/stderr, writes the same kind of lines
  and a step event split across two writes into the events file, one checkpoint, then ``done``;
- ``slow``: a step every 50 ms until SIGINT, then a checkpoint, a state folder and ``done`` (interrupted);
- ``stubborn``: like ``slow`` but ignores SIGINT (only SIGKILL ends it);
- ``slowsteps``: like ``slow`` at 2 s a step (its events say so), and it ends the step it is in before it saves;
- ``diskfull``: three steps, then waits for a file ``disk_full_now`` in its output folder and fails as torch's
  writer does on a full disk ("unexpected pos"), exit code 1.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from lib_trainer.trainer.schema import load_config

stop = {"requested": False}


def main() -> int:
    cfg, _ = load_config(sys.argv[-1])
    mode = os.environ.get("FAKE_TRAINER_MODE", "garbage")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = open(cfg.effective_events_file, "ab")

    def emit(kind: str, **fields) -> None:
        line = json.dumps({"event": kind, "time": time.time(), **fields}).encode() + b"\n"
        events.write(line)
        events.flush()
        sys.stdout.buffer.write(line)
        sys.stdout.flush()

    def checkpoint(step: int, suffix: str) -> str:
        path = out / f"{cfg.output_name}{suffix}.safetensors"
        header = json.dumps({"__metadata__": {"ss_steps": str(step), "ss_epoch": "1"}}).encode()
        path.write_bytes(len(header).to_bytes(8, "little") + header)
        emit("checkpoint", epoch=1, step=step, path=str(path))
        return str(path)

    def stopped(step: int) -> int:
        """What a stopped trainer writes: a checkpoint, a state folder and an interrupted ``done``."""
        path = checkpoint(step, f"-step{step:08d}")
        state = out / f"{cfg.output_name}-step{step:08d}-state"
        state.mkdir(exist_ok=True)
        (state / "train_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
        emit("done", checkpoints=[path], interrupted=True, steps=step)
        return 0

    if mode == "garbage":
        print(f"cwd={os.getcwd()} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
        print(f"PYTHONPATH={os.environ.get('PYTHONPATH')}", flush=True)
        sys.stdout.buffer.write(b"Loading model...\n\xff\xfe\x00 binary junk \x1b[31m\n[1, 2, 3]\n{\"not\": \"an event\"}\n")
        sys.stdout.buffer.write(b'{"event": "done", "checkpoints": [], "interrupted": false\n')  # cut short
        sys.stdout.flush()
        sys.stderr.write("Traceback (most recent call last): not really\n" + "x" * 5000 + "\n")
        sys.stderr.flush()
        emit("start", total_steps=3, epochs=1, steps_per_epoch=3, images=3, device="cpu")
        events.write(b"garbage in the events file\n{\"event\": 5}\n[\"event\"]\n\xff\xfe\n")
        events.write(b'{"event": "step", "step": "three", "loss": "much"}\n')
        events.flush()
        line = json.dumps({"event": "step", "step": 2, "epoch": 1, "loss": 0.25, "lr": 0.001, "it_per_s": 2.0,
                           "eta_s": 0.5}).encode()
        events.write(line[:20])  # a half-written line: the runner must wait for the rest
        events.flush()
        time.sleep(0.6)
        events.write(line[20:] + b"\n")
        events.flush()
        final = checkpoint(3, "")
        print("some library chatter {braces} [brackets]", flush=True)
        emit("done", checkpoints=[final], interrupted=False, steps=3)
        return 0

    if mode == "diskfull":
        emit("start", total_steps=30, epochs=1, steps_per_epoch=30, images=1, device="cpu")
        for step in (1, 2, 3):
            emit("step", step=step, epoch=1, loss=0.5, lr=0.001, it_per_s=20.0, eta_s=1.0)
        while not (out / "disk_full_now").exists():
            time.sleep(0.05)
        emit("error", message="RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0",
             traceback_tail="torch/serialization.py in save")
        return 1

    if mode == "slowsteps":
        signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
        emit("start", total_steps=1000, epochs=1, steps_per_epoch=1000, images=1, device="cpu")
        step = 0
        while not stop["requested"]:
            step += 1
            emit("step", step=step, epoch=1, loss=0.5, lr=0.001, it_per_s=0.5, eta_s=2000.0)
            time.sleep(0.2)
        time.sleep(2.5)  # the rest of the step it was in: longer than stop_timeout_s alone
        return stopped(step)

    if mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    emit("start", total_steps=100000, epochs=1, steps_per_epoch=100000, images=1, device="cpu")
    step = 0
    while not stop["requested"]:
        step += 1
        emit("step", step=step, epoch=1, loss=1.0 / step, lr=0.001, it_per_s=20.0, eta_s=5000.0)
        time.sleep(0.05)
    return stopped(step)


if __name__ == "__main__":
    sys.exit(main())
