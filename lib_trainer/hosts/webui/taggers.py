"""The WebUI's taggers for the Captions step: DeepBooru (built in), BLIP and the CLIP interrogator (built in, need
their models), and the WD14 tagger extension's models when it is installed. Offline, a tagger whose model is not on
disk is not offered (it would download it); ``unavailable_taggers`` says which were left out, why and what to do."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from lib_trainer.common.i18n import tr
from lib_trainer.common.tags import KAOMOJI
from lib_trainer.hosts.base import HostError, TaggerInfo, TaggerUnavailable
from lib_trainer.hosts.webui.webui_modules import offline, offline_variables, webui_module

WD14_DEFAULT_THRESHOLD = 0.35
# Where the WebUI's own code (modules/deepbooru.py, modules/interrogate.py) puts the models it downloads on first use.
DEEPBOORU_MODEL = ("torch_deepdanbooru", "model-resnet_custom_v3.pt",
                   "https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt")
BLIP_MODEL = ("BLIP", "model_base_caption_capfilt_large.pth",
              "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
              "model_base_caption_capfilt_large.pth")
CLIP_MODEL_FILE = "ViT-L-14.pt"  # clip.load("ViT-L/14", download_root=--clip-models-path or ~/.cache/clip)
BLIP_TOKENIZER = ("bert-base-uncased", "vocab.txt")  # BLIP's init_tokenizer: BertTokenizer.from_pretrained(…)
WD14_EXTENSION_URL = "https://github.com/picobyte/stable-diffusion-webui-wd14-tagger"


def _wd14_on_disk(interrogator: Any) -> bool:
    """A WD14-extension model that can run without a download: a local ONNX model or DeepDanbooru project, or
    a Hugging Face model already in the cache."""
    if getattr(interrogator, "local_model", None) or getattr(interrogator, "project_path", None):
        return True
    repo_id = getattr(interrogator, "repo_id", None)
    if not repo_id or not getattr(interrogator, "is_hf", True):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        cache_dir = getattr(webui_module("shared").opts, "tagger_hf_cache_dir", None) or None  # picobyte's setting
        cached = try_to_load_from_cache(repo_id, getattr(interrogator, "model_path", None) or "model.onnx",
                                        cache_dir=cache_dir)
    except Exception:
        return False
    return isinstance(cached, str)


def _hf_cached(repo_id: str, filename: str) -> bool:
    """Whether a Hugging Face file is in the local cache (so it loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:
        return False


def _split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class WebUITaggers:
    """The tagger part of :class:`lib_trainer.hosts.webui.host.WebUIHost`."""

    def taggers(self) -> list[TaggerInfo]:
        shared = webui_module("shared")
        found: list[TaggerInfo] = []
        if self._deepbooru_usable():
            threshold = getattr(shared.opts, "interrogate_deepbooru_score_threshold", 0.5)
            found.append(TaggerInfo("deepbooru", tr("DeepBooru (anime tags)"), True, float(threshold)))
        if getattr(shared, "interrogator", None) is not None and self._interrogator_usable():
            found.append(TaggerInfo("blip", tr("BLIP (a sentence)"), False))
            if self._clip_usable():
                found.append(TaggerInfo("clip", tr("CLIP interrogator (BLIP sentence + CLIP keywords)"), False))
        for key, interrogator in self._wd14_interrogators().items():
            found.append(TaggerInfo(f"wd14:{key}", tr("WD14 tagger: {model}", model=getattr(interrogator, "name", key)),
                                    True, WD14_DEFAULT_THRESHOLD))
        return found

    def unavailable_taggers(self) -> list[TaggerUnavailable]:
        """What taggers() left out and why, in its order: DeepBooru, BLIP, CLIP, the WD14 tagger extension."""
        shared = webui_module("shared")
        missing: list[TaggerUnavailable] = []
        no_downloads = tr("the WebUI runs offline ({variables} set), so it does not download it",
                          variables=offline_variables())
        try:
            webui_module("deepbooru")
        except ImportError as exc:
            missing.append(TaggerUnavailable(tr("DeepBooru (anime tags)"), tr(
                "The WebUI's DeepBooru module could not be loaded ({error}); see the WebUI's console.", error=exc)))
        else:
            if not self._deepbooru_usable():
                missing.append(TaggerUnavailable(tr("DeepBooru (anime tags)"), self._model_missing(
                    DEEPBOORU_MODEL, no_downloads, tr("DeepBooru"))))
        blip, clip = tr("BLIP (a sentence)"), tr("CLIP interrogator (BLIP sentence + CLIP keywords)")
        if getattr(shared, "interrogator", None) is None:
            reason = tr("The WebUI has not loaded its interrogator (BLIP and CLIP); see the WebUI's console.")
            missing += [TaggerUnavailable(blip, reason), TaggerUnavailable(clip, reason)]
        elif not any((self._models_path() / BLIP_MODEL[0]).glob("*.pth")) and offline():
            reason = self._model_missing(BLIP_MODEL, no_downloads, tr("BLIP"))
            missing += [TaggerUnavailable(blip, reason), TaggerUnavailable(clip, reason)]
        elif not self._interrogator_usable():
            reason = tr("BLIP also loads the {name} tokenizer from Hugging Face, which is not in the cache and {why}: "
                        "start the WebUI once without {variables} and caption one picture with BLIP (it downloads "
                        "the tokenizer then).", name=BLIP_TOKENIZER[0], why=no_downloads,
                        variables=offline_variables())
            missing += [TaggerUnavailable(blip, reason), TaggerUnavailable(clip, reason)]
        elif not self._clip_usable():
            missing.append(TaggerUnavailable(clip, tr(
                "CLIP's model {file} is not in {folder} and {why}: put it there, or start the WebUI once without "
                "{variables} and interrogate one picture with CLIP in img2img (it downloads the model then).",
                file=CLIP_MODEL_FILE, folder=self._clip_dir(), why=no_downloads, variables=offline_variables())))
        missing += self._wd14_unavailable(no_downloads)
        return missing

    @staticmethod
    def _models_path() -> Path:
        return Path(webui_module("paths").models_path)

    def _model_missing(self, model: tuple[str, str, str], why: str, name: str) -> str:
        folder, file, url = model
        return tr("{name}'s model is not on disk ({folder}) and {why}. Download {file} from {url} into that folder "
                  "and reload this page, or start the WebUI once without {variables} and caption one picture: "
                  "{name} downloads its model by itself then.", name=name, folder=self._models_path() / folder,
                  why=why, file=file, url=url, variables=offline_variables())

    def _deepbooru_usable(self) -> bool:
        """DeepBooru downloads its model on first use; offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE set) it is
        offered only when the model is already on disk."""
        try:
            webui_module("deepbooru")
        except ImportError:
            return False
        return not offline() or any((self._models_path() / DEEPBOORU_MODEL[0]).glob("*.pt"))

    def _interrogator_usable(self) -> bool:
        """BLIP (and so the CLIP interrogator) downloads its model and its tokenizer on first use: offline, both
        must be on disk."""
        return not offline() or (any((self._models_path() / BLIP_MODEL[0]).glob("*.pth")) and
                                 _hf_cached(*BLIP_TOKENIZER))

    @staticmethod
    def _clip_dir() -> Path:
        folder = getattr(getattr(webui_module("shared"), "cmd_opts", None), "clip_models_path", None)
        return Path(folder) if folder else Path(os.path.expanduser("~/.cache/clip"))

    def _clip_usable(self) -> bool:
        """The CLIP interrogator also loads CLIP ViT-L/14, which clip.load downloads when it is not on disk."""
        return not offline() or (self._clip_dir() / CLIP_MODEL_FILE).is_file()

    def _wd14_unavailable(self, no_downloads: str) -> list[TaggerUnavailable]:
        title = tr("WD14 tagger")
        utils = sys.modules.get("tagger.utils")
        if utils is None:
            return [TaggerUnavailable(title, tr(
                "The WD14 tagger extension is not loaded (not installed, or turned off in Extensions). To add it: "
                "Extensions → Install from URL → {url} → Install, then restart the WebUI.", url=WD14_EXTENSION_URL))]
        interrogators = getattr(utils, "interrogators", None)
        if not isinstance(interrogators, dict) or not interrogators:
            return [TaggerUnavailable(title, tr(
                "The WD14 tagger extension has no models: add one in its Tagger tab, then reload this page."))]
        offered = set(self._wd14_interrogators())
        left_out = [str(getattr(v, "name", k)) for k, v in interrogators.items() if str(k) not in offered]
        if not left_out:
            return []
        return [TaggerUnavailable(title, tr(
            "Its models {names} are not on disk and {why}: start the WebUI once without {variables} and tag one "
            "picture with each in its Tagger tab, then reload this page.", names=", ".join(left_out),
            why=no_downloads, variables=offline_variables()))]

    def _wd14_interrogators(self) -> dict[str, Any]:
        """The interrogators of the WD14 tagger extension (toriato's or picobyte's fork) when it is installed:
        both keep them in ``tagger.utils.interrogators``, each with ``interrogate(image) -> (ratings, tags)``.
        The extension adds the models on disk (its ONNX and DeepDanbooru folders) only when its refresh button
        is pressed, so that refresh runs once here; offline, models that would be downloaded are left out."""
        utils = sys.modules.get("tagger.utils")
        if utils is None:
            return {}
        if not self._wd14_refreshed and callable(getattr(utils, "refresh_interrogators", None)):
            self._wd14_refreshed = True
            try:
                utils.refresh_interrogators()
            except Exception as exc:  # a broken model folder must not hide the other taggers
                print(f"Train Tools: the WD14 tagger's model list could not be refreshed: {exc}", file=sys.stderr)
        interrogators = getattr(utils, "interrogators", None)
        if not isinstance(interrogators, dict):
            return {}
        no_downloads = offline()
        return {str(k): v for k, v in interrogators.items()
                if hasattr(v, "interrogate") and (not no_downloads or _wd14_on_disk(v))}

    def tag(self, tagger_id: str, image, threshold: Optional[float] = None) -> list[str]:
        known = {t.id: t for t in self.taggers()}
        if tagger_id not in known:
            raise HostError(tr("Unknown tagger {name}; this host has: {names}", name=tagger_id,
                               names=", ".join(known) or "-"))
        if threshold is None:
            threshold = known[tagger_id].default_threshold
        image = image.convert("RGB")
        with self._queue_lock():
            try:
                if tagger_id == "deepbooru":
                    return self._tag_deepbooru(image, threshold)
                if tagger_id in ("blip", "clip"):
                    return self._tag_interrogator(tagger_id, image)
                return self._tag_wd14(tagger_id.split(":", 1)[1], image, threshold)
            except HostError:
                raise
            except Exception as exc:
                raise HostError(tr("Tagger {name} failed: {error}", name=known[tagger_id].title,
                                   error=f"{type(exc).__name__}: {exc}")) from exc

    @contextlib.contextmanager
    def _temporary_opts(self, **values: Any) -> Iterator[None]:
        """Set WebUI options for one call (under the queue lock) and put the person's values back."""
        opts = webui_module("shared").opts
        data = opts.data
        saved = {k: (k in data, data.get(k)) for k in values}
        try:
            for key, value in values.items():
                data[key] = value
            yield
        finally:
            for key, (present, old) in saved.items():
                if present:
                    data[key] = old
                else:
                    data.pop(key, None)

    def _tag_deepbooru(self, image, threshold: Optional[float]) -> list[str]:
        deepbooru = webui_module("deepbooru")
        opts = webui_module("shared").opts
        if threshold is None:
            threshold = float(getattr(opts, "interrogate_deepbooru_score_threshold", 0.5))
        # best first, without "(tag:0.87)" weights; spaces, escaping and filtered tags stay the person's choice
        with self._temporary_opts(interrogate_deepbooru_score_threshold=float(threshold), deepbooru_sort_alpha=False,
                                  interrogate_return_ranks=False):
            deepbooru.model.start()
            try:
                text = deepbooru.model.tag_multi(image)
            finally:
                deepbooru.model.stop()
        return _split_tags(text)

    def _tag_interrogator(self, tagger_id: str, image) -> list[str]:
        interrogator = webui_module("shared").interrogator
        with self._temporary_opts(interrogate_return_ranks=False):
            if tagger_id == "clip":
                text = interrogator.interrogate(image)
                if text.endswith("<error>"):  # the interrogator reports its failures this way
                    raise HostError(tr("The CLIP interrogator failed (see the WebUI's console)."))
                return _split_tags(text)
            interrogator.load()
            try:
                return _split_tags(interrogator.generate_caption(image))
            finally:
                interrogator.unload()

    def _tag_wd14(self, key: str, image, threshold: Optional[float]) -> list[str]:
        interrogator = self._wd14_interrogators().get(key)
        if interrogator is None:
            raise HostError(tr("The WD14 tagger model {name} is no longer available.", name=key))
        _ratings, confidences = interrogator.interrogate(image)
        limit = WD14_DEFAULT_THRESHOLD if threshold is None else float(threshold)
        ranked = sorted(((t, float(c)) for t, c in confidences.items() if float(c) >= limit), key=lambda tc: -tc[1])
        return [t if t in KAOMOJI else t.replace("_", " ") for t, _ in ranked]
