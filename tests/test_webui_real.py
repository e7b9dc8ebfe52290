"""The WebUI host inside a real WebUI, observed from outside through the WebUI's own API (``/sdapi/v1``).

Runs only when ``TRAIN_TOOLS_WEBUI_DIR`` points at a WebUI (see tests/webui_server.py for how it is started and
driven); skipped otherwise, as in CI. tests/test_host_contract.py runs the common host contract against the same
server; these checks are the ones only a real WebUI can answer: does the host see what the WebUI sees, does a
staged LoRA resolve in the WebUI's own pipeline, and is the WebUI left exactly as it was for a person's own work.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_trainer.hosts.base import PREVIEW_FOLDER, LoraSpec, version_key
from tests.host_contract import HostUnderTest, contract_lora, webui_host  # noqa: F401 — fixtures by name
from tests.trainer_fixtures import tiny_sd1  # noqa: F401
from tests.webui_server import WD14_ENV, WD14_MODEL_FOLDER

PERSON = {"prompt": "a red ball on grass", "negative_prompt": "", "seed": 99, "steps": 3, "width": 64, "height": 64,
          "sampler_name": "Euler a", "cfg_scale": 7.0}


@pytest.fixture(scope="module")
def hut(webui_host) -> HostUnderTest:  # noqa: F811
    return webui_host


@pytest.fixture(scope="module")
def server(hut):
    return hut.host.server


def person_draws(server, **changes) -> tuple[np.ndarray, dict]:
    """A person's own txt2img through the WebUI's API."""
    answer = server.post("/sdapi/v1/txt2img", dict(PERSON, **changes))
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")
    return np.asarray(image, dtype=np.int16), json.loads(answer["info"])


def test_the_host_sees_what_the_webui_lists(hut, server):
    models = server.get("/sdapi/v1/sd-models")
    listing = hut.host.checkpoints(refresh=True)
    assert [c.path for c in listing] == [m["filename"] for m in models]
    assert [c.title for c in listing] == [m["title"] for m in models]
    assert set(hut.host.samplers()) == {s["name"] for s in server.get("/sdapi/v1/samplers")}
    assert hut.host.upscalers() == [u["name"] for u in server.get("/sdapi/v1/upscalers") if u["name"] != "None"]
    is_forge = (hut.host.server.webui_dir / "modules_forge").is_dir()
    assert hut.host.name == ("forge" if is_forge else "webui")


def test_the_extension_tab_is_loaded_next_to_the_probe(server):
    config = server.get("/config")
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert "train_tools_status" in ids or any(str(i).startswith("train_tools") for i in ids if i), \
        "the real Train Tools extension did not build its tab in this WebUI"


def test_a_preview_leaves_the_webui_as_the_person_had_it(hut, server):
    keys = ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_lora", "lora_add_hashes_to_infotext", "uni_pc_order")
    server.post("/sdapi/v1/options", {"lora_add_hashes_to_infotext": False})
    try:
        options = server.get("/sdapi/v1/options")
        before = {k: options[k] for k in keys if k in options}  # Forge has no "sd_lora"
        assert "CLIP_stop_at_last_layers" in before and "sd_model_checkpoint" in before
        mine_before, info_before = person_draws(server)

        result = hut.host.txt2img(hut.request(loras=[LoraSpec(str(hut.lora), 1.0)], clip_skip=2))
        assert "Lora hashes" in result.infotext and "Clip skip: 2" in result.infotext
        hut.host.txt2img(hut.request(sampler="UniPC", steps=2))

        options = server.get("/sdapi/v1/options")
        assert {k: options[k] for k in before} == before
        mine_after, info_after = person_draws(server)
        assert np.array_equal(mine_before, mine_after), "the person's image changed after our preview"
        assert "Lora hashes" not in info_after["infotexts"][0] and "Clip skip" not in info_after["infotexts"][0]
    finally:
        server.post("/sdapi/v1/options", {"lora_add_hashes_to_infotext": True})


def test_a_staged_lora_resolves_in_the_webuis_own_pipeline_and_is_forgotten(hut, server):
    ours = hut.host.txt2img(hut.request(loras=[LoraSpec(str(hut.lora), 0.7)]))
    folder = hut.host.lora_dir() / PREVIEW_FOLDER / version_key(Path(hut.lora).parent)
    server.post("/sdapi/v1/refresh-loras")
    staged = [entry for entry in server.get("/sdapi/v1/loras") if Path(entry["path"]).is_relative_to(folder)]
    assert len(staged) == 1, staged
    name = staged[0]["name"]
    assert name.startswith("tt-") and f'Lora hashes: "{name}: ' in ours.infotext
    assert ours.infotext.split("\n")[0] == hut.request().prompt, "the infotext shows the prompt as requested"

    # the same request written by hand in the WebUI's own txt2img: the same picture
    request = hut.request(loras=[])
    title = next(c.title for c in hut.host.checkpoints() if c.path == hut.checkpoint)
    theirs, info = person_draws(server, prompt=f"{request.prompt} <lora:{name}:0.7>",
                                negative_prompt=request.negative_prompt, seed=request.seed, steps=request.steps,
                                width=request.width, height=request.height, sampler_name=request.sampler,
                                override_settings={"sd_model_checkpoint": title})
    assert f"{name}: " in info["infotexts"][0]
    assert np.array_equal(theirs, np.asarray(ours.image.convert("RGB"), dtype=np.int16))

    hut.host.forget_preview_loras(Path(hut.lora).parent)
    assert not folder.exists()
    assert name not in {entry["name"] for entry in server.get("/sdapi/v1/loras")}


def test_training_and_preview_through_the_extensions_own_api(hut, server):
    """A version left on disk as the tab leaves it, trained and previewed by the extension inside the WebUI,
    started through its /train_tools/v1 API: the job runner, the trainer subprocess with the WebUI's Python,
    the GPU release/restore around it and the preview drawn by the WebUI host."""
    import time

    from lib_trainer.preview.cells import load_manifest
    from lib_trainer.preview.config import PreviewConfig
    from lib_trainer.preview.config import save_config as save_preview_config
    from lib_trainer.projects import Workspace
    from lib_trainer.trainer.schema import TrainConfig, save_config
    from tests.trainer_fixtures import make_dataset

    workspace = Workspace(hut.host.outputs_dir() / "train_tools")
    version = workspace.create_project("webui_e2e", first_version="v1").version("v1")
    version.update(settings={"trigger": "tt_dog", "auto_preview": True})
    make_dataset(version.dataset_dir, folder="2_tt_dog")
    save_config(TrainConfig(
        pretrained_model_name_or_path=hut.checkpoint, train_data_dir=str(version.train_dir),
        output_dir=str(version.checkpoints_dir), output_name=version.output_name, caption_extension=".txt",
        resolution="64,64", max_train_epochs=2, save_every_n_epochs=1, train_batch_size=2, network_dim=4,
        network_alpha=4.0, learning_rate=5e-2, seed=1234, events_file=str(version.events_path),
    ), version.config_path)
    save_preview_config(version, PreviewConfig(prompts=["dog, red ball"], weights=[0.5, 1.0], steps=3,
                                               width=64, height=64, seed=1234))

    job = server.post("/train_tools/v1/jobs", {"project": "webui_e2e", "version": "v1"})
    assert job["status"] in ("queued", "running"), job
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = server.get("/train_tools/v1/status?project=webui_e2e&version=v1")
        manifest = load_manifest(version) or {}
        if status["status"] in ("failed", "cancelled", "interrupted"):
            pytest.fail(f"training ended {status['status']}: {status.get('error')}\n{status.get('events')}")
        if status["status"] == "finished" and manifest.get("grids") and status["job"]["status"] not in ("queued", "running"):
            break
        time.sleep(2)
    else:
        pytest.fail(f"no finished preview within 10 minutes: {status}")

    assert len(version.checkpoints()) == 2
    cells = manifest["cells"].values()
    assert len(cells) == 1 + 2 * 2 and all(c["status"] == "ok" for c in cells), cells
    with_lora = [c for c in cells if c.get("weight")]
    assert all(c["loras_applied"] and "Lora hashes" in c["infotext"] for c in with_lora)
    assert all((version.previews_dir / c["file"]).is_file() for c in cells)
    assert all((version.previews_dir / grid["file"]).is_file() for grid in manifest["grids"])
    assert not status.get("restore_error") and not status.get("after_train_error"), status


def test_the_wd14_tagger_extension_tags_through_the_host(hut, server):
    """picobyte's WD14 tagger extension, linked in when TRAIN_TOOLS_WEBUI_WD14_DIR points at a checkout, with a
    stand-in ONNX model (tags follow the picture's colour) in its local-model folder; onnxruntime must be in the
    WebUI's environment, as the extension itself requires."""
    if not server.wd14:
        pytest.skip(f"{WD14_ENV} is not set: the WD14 tagger extension is not linked into this WebUI")
    wd14 = [t for t in hut.host.taggers() if t.id.startswith("wd14:")]
    assert [t.id for t in wd14] == [f"wd14:{WD14_MODEL_FOLDER}"], "offline, only the model on disk is offered"
    assert wd14[0].uses_threshold and wd14[0].default_threshold == 0.35
    # 448 px: the extension pads smaller pictures to the model's size with white, which would drown the colour
    red = Image.new("RGB", (448, 448), (200, 120, 40))
    assert hut.host.tag(wd14[0].id, red) == ["red theme", "solo", "^_^"]
    assert hut.host.tag(wd14[0].id, red, 0.2) == ["red theme", "solo", "^_^", "green theme"]
    blue = Image.new("RGB", (448, 448), (30, 60, 220))
    assert hut.host.tag(wd14[0].id, blue)[0] == "blue theme"
