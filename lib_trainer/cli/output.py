"""What the CLI prints: text for people or JSON for scripts, progress lines, checkpoint and status wording."""
from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

from lib_trainer.common.i18n import tr


PLAIN_PROGRESS_EVERY_S = 10.0  # without a terminal, a progress line at most this often (and at each new epoch)


class Output:
    """Text for people (progress on one updating line when stdout is a terminal) or JSON for machines."""

    def __init__(self, as_json: bool, stream=None, errors=None):
        self.json = as_json
        self.stream = stream or sys.stdout
        self.errors = errors or sys.stderr
        self.tty = not as_json and _isatty(self.stream)
        self._line = 0  # length of the updating line on screen

    def say(self, text: str = "") -> None:
        if not self.json:
            self._clear()
            print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        self._clear()
        print(text, file=self.errors, flush=True)

    def progress(self, text: str) -> None:
        """One progress line: rewritten in place on a terminal, a plain line otherwise (callers limit the rate)."""
        if self.json:
            return
        if self.tty:
            text = text[:max(20, shutil.get_terminal_size().columns - 1)]  # a wrapped line cannot be rewritten
            self.stream.write("\r" + text + " " * max(0, self._line - len(text)))
            self.stream.flush()
            self._line = len(text)
        else:
            print(text, file=self.stream, flush=True)

    def emit(self, document: Dict[str, Any]) -> None:
        """One JSON line (progress events and the final document), only with --json."""
        if self.json:
            print(json.dumps(document, ensure_ascii=False, default=str), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._line:
            self.stream.write("\r" + " " * self._line + "\r")
            self.stream.flush()
            self._line = 0

    def end_progress(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = 0


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration_text(seconds: Optional[float]) -> str:
    from lib_trainer.presets import format_duration

    return format_duration(seconds)


def epochs_text(epochs: Optional[int]) -> str:
    if epochs == 1:
        return tr("1 epoch")
    return tr("{n} epochs", n=epochs if epochs is not None else "?")


def status_label(status: str) -> str:
    labels = {"draft": tr("draft"), "queued": tr("queued"), "running": tr("training"), "finished": tr("finished"),
              "failed": tr("failed"), "cancelled": tr("stopped"), "interrupted": tr("interrupted"),
              "done": tr("done"), "removed": tr("removed from the queue")}
    return labels.get(status, status)


def checkpoint_dicts(version) -> List[Dict[str, Any]]:
    return [c.to_dict() for c in version.checkpoints()]


def say_checkpoints(out: Output, version) -> None:
    checkpoints = version.checkpoints()
    if not checkpoints:
        out.say(tr("No checkpoints yet."))
        return
    out.say(tr("Checkpoints ({count}):", count=len(checkpoints)))
    for c in checkpoints:
        out.say("  " + tr("{path}  (epoch {epoch}, step {step}, {size} MB)", path=str(c.path),
                          epoch=c.epoch if c.epoch is not None else "?", step=c.step if c.step is not None else "?",
                          size=f"{c.size / 2**20:.1f}"))


class TrainProgress:
    """Trainer events → one updating line (terminal), plain lines (pipe) or JSON lines (--json)."""

    def __init__(self, out: Output):
        self.out = out
        self.total: Optional[int] = None
        self.epochs: Optional[int] = None
        self.last_plain = 0.0
        self.last_epoch: Optional[int] = None

    def event(self, event: Dict[str, Any]) -> None:
        out = self.out
        out.emit(event)
        kind = event.get("event")
        if kind == "start":
            self.total, self.epochs = event.get("total_steps"), event.get("epochs")
            facts = dict(device=event.get("device", "?"), uses=event.get("images", "?"),
                         epochs=epochs_text(self.epochs), steps=self.total or "?")
            if event.get("reg_images"):  # drawn on to match the training pictures' uses, as sd-scripts does
                out.say(tr("Training on {device}: {uses} uses of the training pictures per epoch (pictures × "
                           "repeats) and as many of the regularization pictures ({reg} × repeats), {epochs}, "
                           "{steps} steps.", reg=event["reg_images"], **facts))
            else:
                out.say(tr("Training on {device}: {uses} picture uses per epoch (pictures × repeats), {epochs}, "
                           "{steps} steps.", **facts))
        elif kind == "step":
            line = self.line(event)
            now = time.monotonic()
            new_epoch = event.get("epoch") != self.last_epoch
            last = event.get("step") == self.total
            if out.tty or new_epoch or last or now - self.last_plain >= PLAIN_PROGRESS_EVERY_S:
                out.progress(line)
                self.last_plain, self.last_epoch = now, event.get("epoch")
        elif kind == "checkpoint":
            out.say(tr("checkpoint (epoch {epoch}, step {step}): {path}", epoch=event.get("epoch"),
                       step=event.get("step"), path=event.get("path")))
        elif kind == "sample":
            out.say(tr("sample image: {path}", path=event.get("path")))
        elif kind == "warning" and not out.json:
            out.warn(tr("warning: {message}", message=event.get("message", "")))

    def line(self, e: Dict[str, Any]) -> str:
        loss = e.get("loss")
        speed = e.get("it_per_s")
        return tr("step {step}/{total} · epoch {epoch}/{epochs} · loss {loss} · {speed} it/s · ETA {eta}",
                  step=e.get("step", "?"), total=self.total or "?", epoch=e.get("epoch", "?"),
                  epochs=self.epochs or "?",
                  loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "?",
                  speed=f"{speed:.2f}" if isinstance(speed, (int, float)) else "?", eta=duration_text(e.get("eta_s")))
