"""Test-only WebUI extension: exposes Train Tools' WebUI host over HTTP so the host contract runs in a real WebUI.

tests/webui_server.py links this folder into the extensions folder of a temporary WebUI data dir (never into a
WebUI install) and drives it from the test process through ``RemoteHost``. Every call runs the real
``lib_trainer.hosts.webui.host.WebUIHost`` inside the WebUI process: real ``modules``, real queue lock, real Lora
extension. It only listens where the WebUI listens (the tests start it on 127.0.0.1).
"""
import base64
import io
import os
import sys
import threading
from pathlib import Path

from modules import script_callbacks

_REPO = os.environ.get("TRAIN_TOOLS_REPO") or str(Path(__file__).resolve().parents[3])
if _REPO not in sys.path:
    sys.path.append(_REPO)

PREFIX = "/train_tools_probe/v1"


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image(data: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def on_app_started(_demo, app):
    from dataclasses import asdict

    from fastapi import Body

    from lib_trainer.hosts.base import HostError, HostInterrupted, LoraSpec, Txt2ImgRequest
    from lib_trainer.hosts.webui.host import WebUIHost

    host = WebUIHost()
    events: dict = {}
    events_lock = threading.Lock()

    def txt2img(request: dict, token: str = "", interrupted: bool = False):
        request = dict(request)
        request["loras"] = [LoraSpec(**spec) for spec in request.get("loras", [])]
        event = threading.Event()
        if interrupted:  # the caller's event was already set when it sent the request
            event.set()
        with events_lock:
            events[token] = event
        try:
            result = host.txt2img(Txt2ImgRequest(**request), interrupt=event if token else None)
        finally:
            with events_lock:
                events.pop(token, None)
        return {"image": _png(result.image), "infotext": result.infotext, "seed": result.seed,
                "loras_applied": result.loras_applied}

    def set_event(token: str):
        with events_lock:
            event = events.get(token)
        if event is not None:
            event.set()
        return event is not None

    calls = {
        "name": lambda: host.name,
        "checkpoints": lambda refresh=False: [asdict(c) for c in host.checkpoints(refresh=refresh)],
        "release_gpu": host.release_gpu,
        "restore_gpu": host.restore_gpu,
        "txt2img": txt2img,
        "set_event": set_event,
        "interrupt": host.interrupt,
        "samplers": host.samplers,
        "taggers": lambda: [asdict(t) for t in host.taggers()],
        "tag": lambda tagger_id, image, threshold=None: host.tag(tagger_id, _image(image), threshold),
        "upscalers": host.upscalers,
        "upscale": lambda image, upscaler, scale: _png(host.upscale(_image(image), upscaler, scale)),
        "lora_dir": lambda: str(host.lora_dir()),
        "outputs_dir": lambda: str(host.outputs_dir()),
        "refresh_loras": host.refresh_loras,
        "send_to_txt2img": host.send_to_txt2img,
        "forget_preview_loras": lambda version_dir: host.forget_preview_loras(Path(version_dir)),
    }

    @app.post(PREFIX + "/call")
    def call(payload: dict = Body(...)):  # a plain def: FastAPI runs it in its thread pool, so calls overlap
        method = calls.get(payload.get("method"))
        if method is None:
            return {"error": {"kind": "Unknown", "message": f"no method {payload.get('method')!r}"}}
        try:
            return {"result": method(**payload.get("args", {}))}
        except HostInterrupted as exc:
            return {"error": {"kind": "HostInterrupted", "message": str(exc)}}
        except HostError as exc:
            return {"error": {"kind": "HostError", "message": str(exc)}}
        except Exception as exc:  # noqa: BLE001 — reported to the test as a plain failure
            return {"error": {"kind": "Exception", "message": f"{type(exc).__name__}: {exc}"}}


script_callbacks.on_app_started(on_app_started)
