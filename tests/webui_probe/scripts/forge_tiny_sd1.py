"""Test-only: lets Forge load the tests' tiny SD1 checkpoint, without changing anything in the Forge install.

Forge (``backend/loader.py`` ``split_state_dict``/``forge_loader``) picks a checkpoint's architecture only with
huggingface_guess: ``detection.model_config_from_unet_config`` takes the first entry of ``model_list.models`` whose
``unet_config`` equals the sizes read from the UNet weights (SD1.5: model_channels 320, context_dim 768), then
builds the text encoder and VAE from the configs in ``backend/huggingface/<entry.huggingface_repo>``. A smaller SD1
checkpoint matches no entry and is refused ("Failed to recognize model type!").

tests/webui_server.py writes a config folder for the tiny model (``write_tiny_sd1_forge_repo``) and names it in
``TRAIN_TOOLS_FORGE_TINY_SD1_REPO``; this script adds an SD1.5 entry with the tiny UNet's sizes and that folder
(an absolute ``huggingface_repo``: ``os.path.join`` in forge_loader keeps it as it is). Being a subclass of SD15,
Forge's SD1.5 engine (``matched_guesses = [model_list.SD15]``, an isinstance test) runs it. Checkpoints load on
first use, after the scripts are loaded, so the entry is there in time. Elsewhere (A1111, variable unset) it does
nothing.
"""
import json
import os
from pathlib import Path

_REPO = os.environ.get("TRAIN_TOOLS_FORGE_TINY_SD1_REPO")


def _register(repo: Path) -> None:
    from huggingface_guess import model_list

    if any(getattr(entry, "huggingface_repo", None) == str(repo) for entry in model_list.models):
        return  # scripts are loaded again on a UI reload
    guess = json.loads((repo / "guess.json").read_text(encoding="utf-8"))

    class TinySD1(model_list.SD15):
        huggingface_repo = str(repo)
        unet_config = {**model_list.SD15.unet_config, **guess}

    model_list.models.insert(0, TinySD1)
    print(f"Train Tools probe: Forge will load SD1 checkpoints with {guess} from {repo}")


if _REPO:
    try:
        import huggingface_guess  # noqa: F401  (only Forge has it)
    except ImportError:
        pass
    else:
        _register(Path(_REPO))
