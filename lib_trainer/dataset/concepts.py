"""Concept folders of a version's dataset, and how many repeats to give them.

sd-scripts reads ``dataset/train/<repeats>_<concept>/`` (each picture used ``repeats`` times per epoch) and the
regularization pictures in ``dataset/reg/<repeats>_<class>/``. Here a concept is created, listed, renamed and
its repeats changed; a rename (of the name or the repeats) is one atomic folder rename, and the caption undo
journal is pointed at the new folder so that undo still works afterwards.

Concept names follow :func:`lib_trainer.common.names.validate_name` (any Unicode text a person would type; no path
separators, ``..`` or control characters). Two concepts of one folder may not differ only in case or repeats.

Standard library only: this runs inside the WebUI process.
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from lib_trainer.dataset.captions.journal import caption_lock, journal_path_for, relocate_journal
from lib_trainer.dataset.captions.sidecar import list_pictures
from lib_trainer.dataset.captions.suggestions import preset_kind
from lib_trainer.common.i18n import tr
from lib_trainer.presets import PRESET_VALUES
from lib_trainer.common.names import InvalidName, validate_name
from lib_trainer.trainer.folders import parse_folder_name

__all__ = [
    "TRAIN_DIR", "REG_DIR", "MAX_REPEATS", "PICTURE_USE_BUDGET", "DEFAULT_EPOCHS", "ConceptError", "Concept",
    "validate_concept_name", "validate_repeats", "concept_folder_name", "concepts_root", "list_concepts",
    "find_concept", "create_concept", "rename_concept", "set_repeats", "suggest_repeats", "repeats_in_use",
]

TRAIN_DIR = "train"
REG_DIR = "reg"
MAX_REPEATS = 1000

PathLike = Union[str, os.PathLike]


class ConceptError(ValueError):
    """A concept operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class Concept:
    name: str
    repeats: int
    path: Path
    is_reg: bool
    pictures: int  # pictures lying in the folder

    @property
    def folder_name(self) -> str:
        return self.path.name


def validate_concept_name(name: str) -> str:
    """The name, NFC-normalised and trimmed, or :class:`ConceptError` saying why it cannot be a concept."""
    try:
        return validate_name(name, tr("concept name"))
    except InvalidName as exc:
        raise ConceptError(str(exc)) from None


def validate_repeats(repeats: object) -> int:
    if isinstance(repeats, bool):
        repeats = None
    try:
        value = int(repeats)  # type: ignore[arg-type]
        exact = float(repeats) == value  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        value, exact = 0, False
    if not exact or not 1 <= value <= MAX_REPEATS:
        raise ConceptError(tr("Repeats must be a whole number from 1 to {max}, got {value}.", max=MAX_REPEATS,
                              value=repeats))
    return value


def concept_folder_name(name: str, repeats: int) -> str:
    return f"{validate_repeats(repeats)}_{validate_concept_name(name)}"


def concepts_root(dataset_dir: PathLike, *, reg: bool = False) -> Path:
    return Path(dataset_dir) / (REG_DIR if reg else TRAIN_DIR)


def _same_name(a: str, b: str) -> bool:
    return unicodedata.normalize("NFC", a).casefold() == unicodedata.normalize("NFC", b).casefold()


def list_concepts(dataset_dir: PathLike, *, reg: bool = False) -> List[Concept]:
    """The concept folders (``<repeats>_<name>``) of ``dataset/train`` (or ``dataset/reg``), by name."""
    root = concepts_root(dataset_dir, reg=reg)
    try:
        children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    concepts = []
    for child in children:
        parsed = parse_folder_name(child.name)
        if parsed is None or not parsed[1]:
            continue
        repeats, name = parsed
        concepts.append(Concept(name=name, repeats=repeats, path=child, is_reg=reg,
                                pictures=len(list_pictures(child))))
    concepts.sort(key=lambda c: (c.name.casefold(), c.repeats))
    return concepts


def find_concept(dataset_dir: PathLike, name: str, *, reg: bool = False) -> Concept:
    for concept in list_concepts(dataset_dir, reg=reg):
        if _same_name(concept.name, name):
            return concept
    raise ConceptError(tr("There is no concept \"{name}\" in {folder}.", name=name,
                          folder=concepts_root(dataset_dir, reg=reg)))


def _refuse_taken(dataset_dir: PathLike, name: str, reg: bool, allow: Optional[Path] = None) -> None:
    for concept in list_concepts(dataset_dir, reg=reg):
        if _same_name(concept.name, name) and concept.path != allow:
            raise ConceptError(tr("A concept named \"{name}\" already exists ({folder}).", name=concept.name,
                                  folder=concept.folder_name))


def create_concept(dataset_dir: PathLike, name: str, repeats: int, *, reg: bool = False) -> Concept:
    """Create ``dataset/train/<repeats>_<name>/`` (or under ``dataset/reg``)."""
    name = validate_concept_name(name)
    folder = concepts_root(dataset_dir, reg=reg) / concept_folder_name(name, repeats)
    _refuse_taken(dataset_dir, name, reg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise ConceptError(tr("A concept named \"{name}\" already exists ({folder}).", name=name,
                              folder=folder.name)) from None
    return Concept(name=name, repeats=int(repeats), path=folder, is_reg=reg, pictures=0)


def _move(dataset_dir: PathLike, concept: Concept, name: str, repeats: int) -> Concept:
    target = concept.path.with_name(concept_folder_name(name, repeats))
    if target == concept.path:
        return concept
    if os.path.lexists(target):
        try:
            case_only = os.path.samefile(target, concept.path)
        except OSError:
            case_only = False
        if not case_only:
            raise ConceptError(tr("A folder named {folder} already exists.", folder=target.name))
    journal = journal_path_for(dataset_dir)
    with caption_lock(journal):  # not while a captioning run writes into the folder
        # One rename of the folder: the trainer and the caption files never see a half-moved concept.
        os.rename(concept.path, target)
        relocate_journal(journal, concept.path, target)
    return Concept(name=name, repeats=repeats, path=target, is_reg=concept.is_reg, pictures=concept.pictures)


def rename_concept(dataset_dir: PathLike, name: str, new_name: str, *, reg: bool = False) -> Concept:
    concept = find_concept(dataset_dir, name, reg=reg)
    new_name = validate_concept_name(new_name)
    _refuse_taken(dataset_dir, new_name, reg, allow=concept.path)
    return _move(dataset_dir, concept, new_name, concept.repeats)


def set_repeats(dataset_dir: PathLike, name: str, repeats: int, *, reg: bool = False) -> Concept:
    concept = find_concept(dataset_dir, name, reg=reg)
    return _move(dataset_dir, concept, concept.name, validate_repeats(repeats))


def regularization_folder(dataset_dir: PathLike, class_name: str, repeats: object = 1) -> Concept:
    """The regularization folder ``dataset/reg/<repeats>_<class>/`` for ``class_name`` and ``repeats``: created,
    or the existing one renamed (a version has one class of regularization pictures, how people use them)."""
    name = (class_name or "").strip()
    if not name:
        raise ConceptError(tr("Type the class first: what the pictures show in general, e.g. woman, man, dog."))
    existing = list_concepts(dataset_dir, reg=True)
    if not existing:
        return create_concept(dataset_dir, name, validate_repeats(repeats), reg=True)
    concept = existing[0]
    if concept.name != name:
        concept = rename_concept(dataset_dir, concept.name, name, reg=True)
    return set_repeats(dataset_dir, concept.name, repeats, reg=True)


# ---- how many repeats -------------------------------------------------------------------------------------------
#: Picture uses per run (pictures × repeats × epochs) for each kind of subject: what the tools people start from
#: add up to with their own defaults for a usual dataset of 20 pictures (seed 001 line 122: "上传20~30张照片"; seed
#: 003 line 818: "一般可以准备 20-50 张图"). The seeds' own repeats (seed 003 lines 1023–1027: "一般二次元可以
#: 15-30，三次元可以 50-100", with "max_train_epoches … 一般可以设为 5-10", lines 1078–1080) give a real person
#: 20 × 50–100 × 5–10 = 5,000–20,000 uses, several times any anchor below; seed 001 lines 284–286 says what to do
#: instead: more repeats when the LoRA does not look like the person, fewer when it overfits.
PICTURE_USE_BUDGET: Dict[str, int] = {
    # kohya_ss presets/lora/"SDXL - LoRA face dogu_cat v1.0.json": "Good for faces. Use 20 1024x1024 cropped
    # images, 20 repeats" (training_comment, line 85), "epoch": 10 (line 25), "train_batch_size": 1 (line 83):
    # 20 × 20 × 10 = 4,000.
    "person": 4000,
    # kohya_ss presets/lora/"SDXL - LoRA AI_characters standard v1.1.json": "3 repeats" (training_comment, line
    # 85) × "epoch": 50 (line 25) = 150 uses of each picture, 3,000 for 20 pictures; inside seed 003's anime range
    # for 20 pictures (15–30 repeats × 5–10 epochs = 1,500–6,000).
    "character": 3000,
    # Products, like characters, must keep one exact look (shape, logo); no anchor has a product preset, so they
    # get the character's budget.
    "product": 3000,
    # kohya sd-scripts: --max_train_steps defaults to 1600 (library/train_util.py:3952, at batch 1), and its docs'
    # example dataset is num_repeats = 10 at batch_size = 4 (docs/train_README-ja.md:115, 120) trained with
    # --max_train_steps=400 (docs/train_network_README-ja.md:68): 400 × 4 = 1,600 uses.
    "general": 1600,
    # Akegarasu/lora-scripts: batch_size=1, max_train_epoches=10 (train.sh:20–21) and 5 repeats for 11–50
    # pictures (suggest_num_repeat, mikazuki/utils/train_utils.py:214–221): 20 × 5 × 10 = 1,000, the smallest of
    # the anchors; a style learns from many varied pictures, not from seeing the same ones again.
    "style": 1000,
}
#: Epochs when neither the caller nor the preset (``presets.PRESET_VALUES``) says: lora-scripts' max_train_epoches=10
#: (train.sh:21; its GUI's default 10, mikazuki/schema/lora-basic.ts:19), the top of seed 003's "5-10" (line 1080).
DEFAULT_EPOCHS = 10
#: The repeats shown before there are pictures are for this many: the seeds' usual dataset (see above).
TYPICAL_PICTURES = 20
_KIND_LABELS = {
    "character": "Anime character",
    "person": "Real person",
    "style": "Style",
    "product": "Product or object",
    "general": "General subject",
}


def _whole(value: object, least: int, message: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConceptError(message)
    return value


def _budget_repeats(n_pictures: int, budget: int, epochs: int, batch_size: int) -> int:
    """The most repeats whose picture uses stay within ``budget`` (at least 1), lowered by at most a quarter to the
    nearest that ends every epoch on a full batch, when there is one."""
    repeats = max(1, min(MAX_REPEATS, budget // (n_pictures * epochs)))
    if batch_size > 1:
        for fewer in range(repeats, max(1, repeats - repeats // 4) - 1, -1):
            if (n_pictures * fewer) % batch_size == 0:
                return fewer
    return repeats


def suggest_repeats(n_pictures: int, preset: Optional[str], batch_size: int = 1,
                    epochs: Optional[int] = None) -> Tuple[int, str]:
    """Repeats for a concept folder of ``n_pictures`` pictures trained ``epochs`` epochs (default: the preset's)
    with ``preset``, and why (translated).

    Each kind of subject has a budget of picture uses per run (:data:`PICTURE_USE_BUDGET`: pictures × repeats ×
    epochs); the repeats are the most that stay within it, spread over all the epochs so that every epoch still
    leaves a checkpoint to compare. More pictures get fewer repeats, never fewer than 1 (then a large dataset goes
    over the budget, and the sentence says so). With a batch size above 1 the repeats may be lowered a little so
    that each epoch ends on a full batch; the steps are ``ceil(pictures × repeats / batch)`` per epoch.
    """
    _whole(n_pictures, 0, tr("The number of pictures must be a whole number, 0 or more."))
    _whole(batch_size, 1, tr("The batch size must be a whole number, 1 or more."))
    if epochs is None:
        epochs = int(PRESET_VALUES.get(preset or "", {}).get("max_train_epochs") or DEFAULT_EPOCHS)
    _whole(epochs, 1, tr("The number of epochs must be a whole number, 1 or more."))
    kind = preset_kind(preset)
    budget = PICTURE_USE_BUDGET[kind]
    kind_label = tr(_KIND_LABELS[kind])
    if n_pictures == 0:
        repeats = _budget_repeats(TYPICAL_PICTURES, budget, epochs, batch_size)
        return repeats, tr("{kind}: a budget of {budget} picture uses per run (pictures × repeats × epochs). There "
                           "are no pictures yet; for {n} pictures and {epochs} epochs that is {repeats} repeats.",
                           kind=kind_label, budget=f"{budget:,}", n=TYPICAL_PICTURES, epochs=epochs,
                           repeats=repeats)
    repeats = _budget_repeats(n_pictures, budget, epochs, batch_size)
    uses = n_pictures * repeats * epochs
    steps = -(-(n_pictures * repeats) // batch_size) * epochs
    why = tr("{kind}: a budget of {budget} picture uses per run (pictures × repeats × epochs), spread over the "
             "{epochs} epochs so that every epoch leaves a checkpoint to compare. {n} pictures × {repeats} repeats "
             "× {epochs} epochs = {uses} picture uses, {steps} steps at batch {batch}.",
             kind=kind_label, budget=f"{budget:,}", n=n_pictures, repeats=repeats, epochs=epochs, uses=f"{uses:,}",
             steps=f"{steps:,}", batch=batch_size)
    if uses > budget:
        why += " " + tr("With this many pictures even 1 repeat goes over the budget; fewer epochs would keep it.")
    return repeats, why


def repeats_in_use(suggested: int, concept: Optional[Concept]) -> str:
    """What the suggestion of :func:`suggest_repeats` changes for now: the repeats the training pictures use (the
    folder's), which stay until "Apply repeats" (or a new "Preprocess") changes them."""
    if concept is None:
        return tr("Not in use yet: there are no training pictures; \"Preprocess\" makes them with the repeats in "
                  "the Repeats field.")
    if concept.repeats == suggested:
        return tr("In use: the training pictures ({folder}) have these {repeats} repeats.", folder=concept.folder_name,
                  repeats=concept.repeats)
    return tr("A suggestion only: the training pictures ({folder}) use {repeats} repeats until \"Apply repeats\" "
              "or \"Preprocess\" changes them (\"Suggest repeats\" puts {suggested} in the Repeats field).",
              folder=concept.folder_name, repeats=concept.repeats, suggested=suggested)
