"""The host contract: one set of checks that every Host implementation must pass (see lib_trainer/hosts/base.py).

``tests/test_host_contract.py`` runs :class:`HostContract` against every host available: the standalone
(diffusers) host always, the WebUI host when ``TRAIN_TOOLS_WEBUI_DIR`` points at a real WebUI. A host enters the
suite as a :class:`HostUnderTest`: the host, the checkpoint to draw with (the tiny SD1 model, as a path or title
the host accepts) and a LoRA file trained on that checkpoint by the real trainer.

Every drawing is 64×64 with a few steps, so the whole suite stays in seconds on one CPU thread.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image

from lib_trainer.hosts.base import ARCHS, Host, HostError, HostInterrupted, LoraSpec, Txt2ImgRequest

WEBUI_ENV = "TRAIN_TOOLS_WEBUI_DIR"
SIZE = 64
STEPS = 3
PROMPT = "tt_dog, dog, red ball"


@dataclass
class HostUnderTest:
    host: Host
    checkpoint: str  # CheckpointInfo.path or .title of the tiny SD1 model in this host
    lora: Path  # a LoRA trained on that checkpoint
    # whether taggers() must list at least one tagger (True), must list none (False), or may do either (None:
    # a real WebUI offers DeepBooru only when its model is on disk or it may download it)
    offers_taggers: Optional[bool] = None

    def request(self, **changes) -> Txt2ImgRequest:
        values = dict(prompt=PROMPT, negative_prompt="blurry", seed=1234, steps=STEPS, cfg_scale=7.0,
                      width=SIZE, height=SIZE, sampler="Euler a", checkpoint=self.checkpoint)
        values.update(changes)
        return Txt2ImgRequest(**values)

    def draw(self, **changes) -> np.ndarray:
        return pixels(self.host.txt2img(self.request(**changes)).image)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ---- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def contract_lora(tiny_sd1, tmp_path_factory) -> Path:
    """A LoRA trained by the real trainer on the tiny SD1 model, strong enough to change a 64px picture."""
    from tests.trainer_fixtures import fast_training, make_config, train

    tmp = tmp_path_factory.mktemp("contract_lora")
    with fast_training():
        run = train(make_config(tmp, tiny_sd1, max_train_steps=3, learning_rate=1e-2)).assert_ok()
    return run.final


@pytest.fixture(scope="session")
def standalone_host(tiny_sd1, contract_lora, tmp_path_factory) -> HostUnderTest:
    from lib_trainer.hosts.standalone import StandaloneHost

    workspace = tmp_path_factory.mktemp("standalone_workspace")
    host = StandaloneHost(workspace, [tiny_sd1.parent], device="cpu")
    return HostUnderTest(host=host, checkpoint=str(tiny_sd1), lora=contract_lora, offers_taggers=False)


@pytest.fixture(scope="session")
def webui_host(tiny_sd1, contract_lora) -> HostUnderTest:
    """The WebUI host inside a real WebUI (``TRAIN_TOOLS_WEBUI_DIR``), started on loopback with this extension
    linked in and ``tiny_sd1`` in its models/Stable-diffusion, driven over HTTP (see tests/webui_server.py).
    Without the variable the WebUI cases are skipped, as in CI."""
    if not os.environ.get(WEBUI_ENV):
        pytest.skip(f"{WEBUI_ENV} is not set: no real WebUI to test the WebUI host against")
    from tests.webui_server import RemoteHost, shared_server

    server = shared_server(tiny_sd1)
    return HostUnderTest(host=RemoteHost(server), checkpoint=str(server.checkpoint), lora=contract_lora)


HOSTS = ["standalone", "webui"]


@pytest.fixture(params=HOSTS)
def hut(request) -> HostUnderTest:
    return request.getfixturevalue(f"{request.param}_host")


# ---- the contract ------------------------------------------------------------------------------------------------

def check_taggers(host: Host, offers: Optional[bool]) -> list:
    """The tagger part of the contract, also run on its own against hosts that are not drawn with (see
    test_host_contract): taggers() and tag() agree, a higher threshold never adds a tag, an unknown id raises, and
    a host that offers none says why (tag's HostError, or unavailable_taggers). Returns taggers()."""
    picture = Image.new("RGB", (SIZE, SIZE), (200, 120, 40))
    taggers = host.taggers()
    if offers is True:
        assert taggers, f"{type(host).__name__} must offer a tagger here"
    elif offers is False:
        assert taggers == [], taggers
    for info in taggers:
        tags = host.tag(info.id, picture, info.default_threshold)
        assert isinstance(tags, list) and all(isinstance(t, str) and t for t in tags), info
        assert tags == host.tag(info.id, picture), f"{info.id}: threshold None is the tagger's default"
        if info.uses_threshold:
            stricter = host.tag(info.id, picture, min(1.0, (info.default_threshold or 0.0) + 0.3))
            assert set(stricter) <= set(tags), (info.id, stricter, tags)
    with pytest.raises(HostError) as unknown:
        host.tag("no-such-tagger", picture)
    assert str(unknown.value)
    for missing in host.unavailable_taggers():
        assert missing.title and missing.reason, missing
    return taggers


class HostContract:
    """Checks every host must pass; collected through a subclass named Test… in a test module."""

    def test_checkpoints_have_path_title_arch(self, hut: HostUnderTest):
        listing = hut.host.checkpoints()
        assert listing, "a host under test must list at least the tiny checkpoint"
        titles = [c.title for c in listing]
        assert len(set(titles)) == len(titles), titles
        for info in listing:
            assert info.title and os.path.isabs(info.path) and info.arch in ARCHS, info
        ours = [c for c in listing if hut.checkpoint in (c.path, c.title)]
        assert len(ours) == 1 and ours[0].arch == "sd1", listing
        assert [c.path for c in hut.host.checkpoints(refresh=True)] == [c.path for c in listing]

    def test_unknown_checkpoint_raises(self, hut: HostUnderTest):
        with pytest.raises(HostError):
            hut.host.txt2img(hut.request(checkpoint="no-such-model-anywhere.safetensors"))

    def test_txt2img_returns_the_requested_size_and_infotext(self, hut: HostUnderTest):
        result = hut.host.txt2img(hut.request(width=SIZE, height=SIZE + 32, seed=77))
        assert result.image.size == (SIZE, SIZE + 32)
        assert result.seed == 77 and result.loras_applied == []
        first, *rest = result.infotext.split("\n")
        assert first == PROMPT and "Negative prompt: blurry" in rest
        for part in (f"Steps: {STEPS}", "Sampler: Euler a", "Seed: 77", f"Size: {SIZE}x{SIZE + 32}"):
            assert part in result.infotext, result.infotext
        assert "Lora hashes" not in result.infotext

    def test_same_seed_same_image_other_seed_other_image(self, hut: HostUnderTest):
        a, b = hut.draw(seed=5), hut.draw(seed=5)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, hut.draw(seed=6))

    def test_random_seed_is_reported_and_reproducible(self, hut: HostUnderTest):
        result = hut.host.txt2img(hut.request(seed=-1))
        assert result.seed >= 0 and f"Seed: {result.seed}" in result.infotext
        assert np.array_equal(pixels(result.image), hut.draw(seed=result.seed))

    def test_lora_changes_the_image_and_is_reported(self, hut: HostUnderTest):
        base = hut.draw()
        result = hut.host.txt2img(hut.request(loras=[LoraSpec(str(hut.lora), 1.0)]))
        assert result.loras_applied == [str(hut.lora)]
        assert "Lora hashes" in result.infotext, result.infotext
        full = pixels(result.image)
        assert not np.array_equal(full, base)
        partial = hut.draw(loras=[LoraSpec(str(hut.lora), 0.2)])
        assert not np.array_equal(partial, base) and not np.array_equal(partial, full)
        # a small weight stays near the base picture; at larger ones the distance in pixels need not grow with the
        # weight (sampling is far from linear: with this LoRA 0.7 moved the picture further than 1.0)
        assert np.abs(partial - base).mean() < np.abs(full - base).mean()

    def test_weight_zero_and_no_lora_give_exactly_the_base_image(self, hut: HostUnderTest):
        base = hut.draw()
        hut.draw(loras=[LoraSpec(str(hut.lora), 1.0)])
        assert np.array_equal(hut.draw(), base), "a LoRA outlived its request"
        zero = hut.host.txt2img(hut.request(loras=[LoraSpec(str(hut.lora), 0.0)]))
        assert np.array_equal(pixels(zero.image), base) and zero.loras_applied == []

    def test_missing_lora_file_raises_naming_it(self, hut: HostUnderTest, tmp_path):
        missing = tmp_path / "gone-000003.safetensors"
        with pytest.raises(HostError) as err:
            hut.host.txt2img(hut.request(loras=[LoraSpec(str(hut.lora), 1.0), LoraSpec(str(missing), 0.8)]))
        assert "gone-000003" in str(err.value)
        assert np.array_equal(hut.draw(), hut.draw(loras=[])), "the host broke after a failed request"

    def test_bad_size_raises(self, hut: HostUnderTest):
        with pytest.raises(HostError):
            hut.host.txt2img(hut.request(width=60))

    def test_every_sampler_draws(self, hut: HostUnderTest):
        samplers = hut.host.samplers()
        assert "Euler a" in samplers
        for name in samplers:
            image = hut.host.txt2img(hut.request(sampler=name, steps=2)).image
            assert image.size == (SIZE, SIZE), name
        with pytest.raises(HostError):
            hut.host.txt2img(hut.request(sampler="No Such Sampler"))

    def test_release_and_restore_can_be_called_repeatedly(self, hut: HostUnderTest):
        base = hut.draw()
        hut.host.restore_gpu()  # without a release first: nothing to do
        hut.host.release_gpu()
        hut.host.release_gpu()
        assert np.array_equal(hut.draw(), base), "txt2img must work (and be unchanged) after a release"
        hut.host.release_gpu()
        hut.host.restore_gpu()
        hut.host.restore_gpu()
        assert np.array_equal(hut.draw(), base)

    def test_taggers_and_tag_agree(self, hut: HostUnderTest):
        check_taggers(hut.host, hut.offers_taggers)

    def test_upscalers_and_upscale_agree(self, hut: HostUnderTest):
        picture = Image.new("RGB", (SIZE, SIZE), (40, 120, 200))
        for name in hut.host.upscalers()[:2]:
            assert hut.host.upscale(picture, name, 2.0).size == (2 * SIZE, 2 * SIZE), name
        with pytest.raises(HostError):
            hut.host.upscale(picture, "no-such-upscaler", 2.0)

    def test_folders_and_small_calls(self, hut: HostUnderTest, tmp_path):
        assert hut.host.lora_dir().is_dir()
        assert hut.host.outputs_dir().is_dir()
        hut.host.refresh_loras()
        hut.host.forget_preview_loras(tmp_path / "versions" / "never-previewed")
        assert isinstance(hut.host.send_to_txt2img("a prompt"), bool)
        assert isinstance(hut.host.name, str) and hut.host.name

    def test_interrupt_event_set_before_the_request(self, hut: HostUnderTest):
        event = threading.Event()
        event.set()
        with pytest.raises(HostInterrupted):
            hut.host.txt2img(hut.request(), interrupt=event)
        hut.host.interrupt()  # nothing in progress: no effect on the next request
        assert hut.draw().shape == (SIZE, SIZE, 3)

    def test_interrupt_stops_a_running_request(self, hut: HostUnderTest):
        base = hut.draw()
        for how in ("event", "interrupt()"):
            event = threading.Event()
            outcome: dict = {}

            def work():
                try:
                    outcome["result"] = hut.host.txt2img(hut.request(steps=400), interrupt=event)
                except BaseException as exc:  # noqa: BLE001 — handed to the test thread
                    outcome["error"] = exc

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            time.sleep(0.3)
            deadline = time.monotonic() + 60
            while worker.is_alive() and time.monotonic() < deadline:
                if how == "event":
                    event.set()
                else:
                    hut.host.interrupt()
                worker.join(0.05)
            assert not worker.is_alive(), f"{how} did not stop the request"
            assert isinstance(outcome.get("error"), HostInterrupted), (how, outcome)
        assert np.array_equal(hut.draw(), base), "an interrupted request left something behind"
