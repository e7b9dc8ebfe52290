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

import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

from lib_trainer.dataset.captions.journal import caption_lock, journal_path_for, relocate_journal
from lib_trainer.dataset.captions.sidecar import list_pictures
from lib_trainer.dataset.captions.suggestions import preset_kind
from lib_trainer.common.i18n import tr
from lib_trainer.common.names import InvalidName, validate_name
from lib_trainer.trainer.folders import parse_folder_name

__all__ = [
    "TRAIN_DIR", "REG_DIR", "MAX_REPEATS", "REPEAT_GUIDE", "ConceptError", "Concept",
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
#: Repeats (uses of each picture per epoch) for each kind of subject: (with many pictures, with few pictures).
#: The seeds' guidance: anime characters 15–30, real persons 50–100. Styles learn from many varied pictures and
#: overfit quickly on repeats, so they get few; products, like characters, need one exact look.
REPEAT_GUIDE = {
    "character": (15, 30),
    "person": (50, 100),
    "style": (3, 10),
    "product": (10, 25),
    "general": (10, 20),
}
FEW_PICTURES = 10
MANY_PICTURES = 100
_KIND_LABELS = {
    "character": "Anime character",
    "person": "Real person",
    "style": "Style",
    "product": "Product or object",
    "general": "General subject",
}


def suggest_repeats(n_pictures: int, preset: Optional[str], batch_size: int = 1) -> Tuple[int, str]:
    """Repeats for a concept folder of ``n_pictures`` pictures trained with ``preset``, and why (translated).

    The rule: each kind of subject has a range of uses per picture per epoch (:data:`REPEAT_GUIDE`; anime
    characters 15–30, real persons 50–100). Few pictures (``FEW_PICTURES`` = 10 or less) take the top of the
    range, many (``MANY_PICTURES`` = 100 or more) the bottom, in between it falls with the logarithm of the count,
    so that the number of picture uses per epoch still grows with the dataset but more slowly than it.
    The batch size does not change how often a picture should be seen; it only divides the number of steps per
    epoch (told in the explanation), and the repeats are nudged, within the range, so that an epoch ends on a
    full batch when that is possible.
    """
    if isinstance(n_pictures, bool) or not isinstance(n_pictures, int) or n_pictures < 0:
        raise ConceptError(tr("The number of pictures must be a whole number, 0 or more."))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConceptError(tr("The batch size must be a whole number, 1 or more."))
    kind = preset_kind(preset)
    low, high = REPEAT_GUIDE[kind]
    kind_label = tr(_KIND_LABELS[kind])
    if n_pictures == 0:
        return high, tr("{kind}: {low}–{high} repeats (uses of each picture per epoch). There are no pictures "
                        "yet; with few pictures use the top of the range.", kind=kind_label, low=low, high=high)
    if n_pictures <= FEW_PICTURES:
        t = 0.0
    elif n_pictures >= MANY_PICTURES:
        t = 1.0
    else:
        t = math.log(n_pictures / FEW_PICTURES) / math.log(MANY_PICTURES / FEW_PICTURES)
    repeats = int(round(high - t * (high - low)))
    if batch_size > 1 and (n_pictures * repeats) % batch_size:
        # The nearest repeats in the range that fill the last batch (smaller first on a tie).
        candidates = [r for r in range(low, high + 1) if (n_pictures * r) % batch_size == 0]
        if candidates:
            repeats = min(candidates, key=lambda r: (abs(r - repeats), r))
    uses = n_pictures * repeats
    steps = -(-uses // batch_size)
    return repeats, tr(
        "{kind}: {low}–{high} repeats (uses of each picture per epoch); fewer pictures need more repeats. "
        "Suggested for {n} pictures: {repeats} repeats, so that one epoch is {n} × {repeats} = {uses} picture "
        "uses, {steps} steps at batch size {batch}.",
        kind=kind_label, low=low, high=high, n=n_pictures, repeats=repeats, uses=uses, steps=steps,
        batch=batch_size)


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
