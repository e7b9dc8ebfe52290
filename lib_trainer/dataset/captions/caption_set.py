"""The tag tools of the Captions step over one folder tree.

:class:`CaptionSet` is one folder tree (``dataset/train`` with all its concept folders, ``dataset/reg``, or a
single concept folder) seen as picture → tags, with the tag tools: trigger word, add / remove / replace, remove
duplicates, sort, frequency table, "remove these tags so the LoRA learns them", edit one caption. Every bulk
tool is one undoable edit (``journal``). Standard library only: this runs inside the WebUI process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from lib_trainer.common.i18n import tr
from lib_trainer.dataset.captions.journal import (BulkEdit, CaptionLock, EditInfo, EditLabel, EditResult,
                                                  UndoResult, journal_path_for, last_edit, undo_last_edit)
from lib_trainer.dataset.captions.sidecar import (CAPTION_EXTENSION, CaptionError, PictureRef, caption_path,
                                                  list_pictures, normalise_extension, picture_folders, read_caption,
                                                  read_tags, write_caption)
from lib_trainer.dataset.captions.suggestions import TagSuggestion, suggest_tags_to_remove
from lib_trainer.dataset.captions.tags import TagCount, dedupe_tags, join_tags, parse_tags, tag_frequency, tag_key

SORT_ORDERS = ("alphabetical", "frequency")


# ---- the caption set ------------------------------------------------------------------------------------------
class CaptionSet:
    """The captions of one folder tree (``dataset/train``, ``dataset/reg`` or one concept folder), with the tag
    tools. Captions are read from disk at each call, so the set always shows what the trainer will read.

    ``pictures`` arguments select pictures (their paths, or paths relative to ``root``); ``None`` means all.
    Each tool is one :class:`BulkEdit` and can be undone with :meth:`undo`.
    """

    def __init__(self, root: PictureRef, *, extension: str = CAPTION_EXTENSION,
                 journal: Optional[PictureRef] = None, trigger_word: Optional[str] = None):
        self.root = Path(os.path.abspath(root))
        self.extension = normalise_extension(extension)
        self.journal = Path(os.path.abspath(journal)) if journal else journal_path_for(self.root)
        self.trigger_word = trigger_word

    def __repr__(self) -> str:
        return f"CaptionSet({str(self.root)!r})"

    # reading
    def pictures(self) -> List[Path]:
        return [p for folder in picture_folders(self.root) for p in list_pictures(folder)]

    def captions(self, pictures: Optional[Iterable[PictureRef]] = None) -> Dict[Path, List[str]]:
        """Picture → its tags (``[]`` when it has no caption), for all or the selected pictures."""
        return {p: read_tags(p, self.extension) for p in self._select(pictures)}

    def tags_of(self, picture: PictureRef) -> List[str]:
        return read_tags(self._select([picture])[0], self.extension)

    def caption_text(self, picture: PictureRef) -> str:
        """The caption as a person edits it (tags joined with ``", "``; ``""`` when it has none)."""
        return join_tags(self.tags_of(picture))

    def relative_name(self, picture: PictureRef) -> str:
        return Path(os.path.abspath(picture)).relative_to(self.root).as_posix()

    def frequency(self, pictures: Optional[Iterable[PictureRef]] = None) -> List[TagCount]:
        """Each tag with the number of pictures that have it, most frequent first (ties alphabetical)."""
        return tag_frequency(self.captions(pictures).values())

    def uncaptioned(self) -> List[Path]:
        return [p for p, tags in self.captions().items() if not tags]

    # tools
    def set_trigger_word(self, word: str, pictures: Optional[Iterable[PictureRef]] = None, *,
                         previous: Optional[str] = None, keep_tokens_now: Optional[int] = None) -> EditResult:
        """Make ``word`` the first tag of each caption (other copies of it are removed; so is ``previous``, an
        earlier trigger word, when given). The result's ``keep_tokens`` is the value that protects it, which the
        caller puts in the training settings; ``keep_tokens_now`` is the value they hold now (None: unknown), and
        the message tells of keep_tokens only when the two differ."""
        trigger = parse_tags(word)
        if not trigger:
            raise CaptionError(tr("The trigger word is empty: type a word, such as a name nobody uses (sks_dog)."))
        drop = {tag_key(t) for t in trigger} | {tag_key(t) for t in parse_tags(previous)}
        keep_tokens = len(trigger)
        self.trigger_word = join_tags(trigger)
        result = self._edit("set_trigger_word", EditLabel("Trigger word {word}", {"word": self.trigger_word}),
                            pictures, lambda tags: trigger + [t for t in tags if tag_key(t) not in drop])
        result.keep_tokens = keep_tokens
        if keep_tokens_now is None:
            result.message += " " + tr("keep_tokens is now {n}, so that caption shuffling and tag dropout leave "
                                       "the trigger word in front.", n=keep_tokens)
        elif keep_tokens_now != keep_tokens:
            result.message += " " + tr("keep_tokens is now {n} (it was {old}), so that caption shuffling and tag "
                                       "dropout leave the trigger word in front.", n=keep_tokens, old=keep_tokens_now)
        return result

    def add_tags(self, tags: Union[str, Sequence[str]], pictures: Optional[Iterable[PictureRef]] = None, *,
                 at_start: bool = False) -> EditResult:
        """Add tags (a list, or comma-separated text) that a caption does not have yet; at the end, or with
        ``at_start`` in front (after the trigger word)."""
        new = dedupe_tags(parse_tags(tags))
        if not new:
            raise CaptionError(tr("No tag to add: type one or more tags separated by commas."))

        def apply(old: List[str]) -> List[str]:
            have = {tag_key(t) for t in old}
            extra = [t for t in new if tag_key(t) not in have]
            if not extra:
                return old
            if at_start:
                head = self._protected(old)
                return old[:head] + extra + old[head:]
            return old + extra

        return self._edit("add_tags", EditLabel("Add {tags}", {"tags": join_tags(new)}), pictures, apply)

    def remove_tags(self, tags: Union[str, Sequence[str]],
                    pictures: Optional[Iterable[PictureRef]] = None) -> EditResult:
        gone = {tag_key(t) for t in parse_tags(tags)}
        if not gone:
            raise CaptionError(tr("No tag to remove: type or pick one or more tags."))
        return self._edit("remove_tags", EditLabel("Remove {tags}", {"tags": join_tags(parse_tags(tags))}),
                          pictures, lambda old: [t for t in old if tag_key(t) not in gone])

    def replace_tags(self, mapping: Mapping[str, Union[str, Sequence[str]]],
                     pictures: Optional[Iterable[PictureRef]] = None) -> EditResult:
        """Replace each tag ``old`` by ``mapping[old]`` in place (several comma-separated tags, or ``""`` to
        remove it). A replacement the caption already has is not added twice."""
        table: Dict[str, List[str]] = {}
        for old, new in mapping.items():
            key = tag_key(old)
            if not key:
                raise CaptionError(tr("The tag to replace is empty."))
            table[key] = parse_tags(new)
        if not table:
            raise CaptionError(tr("No tag to replace."))

        def apply(old_tags: List[str]) -> List[str]:
            if not any(tag_key(t) in table for t in old_tags):
                return old_tags
            out: List[str] = []
            introduced = set()
            for tag in old_tags:
                key = tag_key(tag)
                if key in table:
                    for new_tag in table[key]:
                        introduced.add(tag_key(new_tag))
                        out.append(new_tag)
                else:
                    out.append(tag)
            seen = set()
            result = []
            for tag in out:
                key = tag_key(tag)
                if key in introduced and key in seen:
                    continue
                seen.add(key)
                result.append(tag)
            return result

        label = ", ".join(f"{old} → {join_tags(parse_tags(new)) or '∅'}" for old, new in mapping.items())
        return self._edit("replace_tags", EditLabel("Replace {what}", {"what": label}), pictures, apply)

    def remove_duplicates(self, pictures: Optional[Iterable[PictureRef]] = None) -> EditResult:
        """Keep the first of tags that are the same (case and ``_`` vs. space ignored)."""
        return self._edit("remove_duplicates", EditLabel("Remove duplicate tags"), pictures, dedupe_tags)

    def sort_tags(self, order: str = "alphabetical", pictures: Optional[Iterable[PictureRef]] = None, *,
                  keep_first: Optional[int] = None) -> EditResult:
        """Sort each caption's tags alphabetically or by how many pictures of the whole set have them (most
        frequent first, ties alphabetical). The first ``keep_first`` tags stay in place; by default the trigger
        word does when a caption starts with it."""
        if order not in SORT_ORDERS:
            raise CaptionError(tr("Unknown sort order {order}; use one of: {orders}.", order=order,
                                  orders=", ".join(SORT_ORDERS)))
        if keep_first is not None and keep_first < 0:
            raise CaptionError(tr("The number of tags to keep in front must be 0 or more."))
        if order == "frequency":
            counts = {tag_key(tc.tag): tc.count for tc in self.frequency()}

            def key(tag: str) -> Tuple:
                return (-counts.get(tag_key(tag), 0), tag_key(tag), tag)
        else:
            def key(tag: str) -> Tuple:
                return (tag_key(tag), tag)

        def apply(old: List[str]) -> List[str]:
            head = self._protected(old) if keep_first is None else min(keep_first, len(old))
            return old[:head] + sorted(old[head:], key=key)

        label = EditLabel("Sort tags by frequency" if order == "frequency" else "Sort tags alphabetically")
        return self._edit("sort_tags", label, pictures, apply)

    def clean_tags(self, pictures: Optional[Iterable[PictureRef]] = None, *,
                   underscores_to_spaces: bool = False) -> EditResult:
        """Rewrite captions in the normal form (``a, b, c``); with ``underscores_to_spaces`` ``long_hair``
        becomes ``long hair`` (as the WebUI's deepbooru option writes it)."""
        label = EditLabel("Underscores to spaces" if underscores_to_spaces else "Tidy captions")
        selected = self._select(pictures)
        with BulkEdit(self.journal, "clean_tags", label, extension=self.extension) as edit:
            for picture in selected:
                text = read_caption(picture, self.extension)
                if text is None:
                    continue
                edit.stage(picture, text, underscores_to_spaces=underscores_to_spaces)
        return self._finish(edit.result)

    def edit_caption(self, picture: PictureRef, text: Union[str, Sequence[str]]) -> EditResult:
        """Set one picture's caption by hand (normalised like every caption). Not an undoable bulk edit: the last
        bulk edit stays undoable and leaves this caption alone if it touched it."""
        picture = self._select([picture])[0]
        with CaptionLock(self.journal):
            old = read_tags(picture, self.extension)
            new = parse_tags(text)
            result = EditResult(action="edit_caption", label=tr("Edit caption"))
            if new != old or not caption_path(picture, self.extension).exists():
                write_caption(picture, new, self.extension)
                result.changed.append(picture)
        result.message = tr("Saved the caption of {name}.", name=picture.name)
        return result

    def suggest_tags_to_remove(self, preset: Optional[str] = "character", *, min_share: float = 0.3,
                               limit: int = 15) -> List[TagSuggestion]:
        """Tags to remove so that the trigger word learns them instead (see suggestions.suggest_tags_to_remove)."""
        return suggest_tags_to_remove(list(self.captions().values()), self.trigger_word, preset,
                                      min_share=min_share, limit=limit)

    # undo
    def last_edit(self) -> Optional[EditInfo]:
        return last_edit(self.journal)

    def undo(self) -> UndoResult:
        return undo_last_edit(self.journal)

    # internals
    def _protected(self, tags: Sequence[str]) -> int:
        """How many leading tags are the trigger word (0 when there is none or the caption does not start with
        it)."""
        trigger = parse_tags(self.trigger_word)
        if trigger and [tag_key(t) for t in tags[:len(trigger)]] == [tag_key(t) for t in trigger]:
            return len(trigger)
        return 0

    def _select(self, pictures: Optional[Iterable[PictureRef]]) -> List[Path]:
        everything = self.pictures()
        if pictures is None:
            return everything
        if isinstance(pictures, (str, os.PathLike)):
            pictures = [pictures]
        index: Dict[str, Path] = {}
        for p in everything:
            index[str(p)] = p
            index[p.relative_to(self.root).as_posix()] = p
        chosen: List[Path] = []
        unknown: List[str] = []
        for item in pictures:
            text = os.fspath(item)
            found = index.get(text) or index.get(os.path.abspath(text)) or index.get(Path(text).as_posix())
            if found is None:
                unknown.append(text)
            elif found not in chosen:
                chosen.append(found)
        if unknown:
            shown = ", ".join(Path(u).name for u in unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise CaptionError(tr("{count} selected picture(s) are not in this dataset: {names}",
                                  count=len(unknown), names=shown))
        return chosen

    def _edit(self, action: str, label: EditLabel, pictures: Optional[Iterable[PictureRef]], change) -> EditResult:
        selected = self._select(pictures)
        with BulkEdit(self.journal, action, label, extension=self.extension) as edit:
            for picture in selected:
                old = read_tags(picture, self.extension)
                new = list(change(list(old)))
                if new != old:
                    edit.stage(picture, new)
        return self._finish(edit.result)

    @staticmethod
    def _finish(result: EditResult) -> EditResult:
        if result.changed:
            result.message = tr("{label}: {count} caption(s) changed. Undo puts them back.", label=result.label,
                                count=len(result.changed))
        else:
            result.message = tr("{label}: no caption needed a change.", label=result.label)
        return result
