"""Captioning pictures with the host's taggers (DeepBooru, BLIP, the WD14 tagger extension …).

:func:`caption_pictures` sends each picture through ``Host.tag`` and writes the tags into its caption file. What
happens to a caption the picture already has is the ``existing`` mode:

* ``"ignore"``: the new tags replace it;
* ``"keep"``: a picture that already has a (non-empty) caption is left as it is and not sent to the tagger;
* ``"prepend"`` / ``"append"``: the new tags go before / after the existing ones; a tag is never there twice.

With ``trigger_word`` the trigger leads every caption written. The whole run is one undoable bulk edit
(:class:`lib_trainer.dataset.captions.BulkEdit`), written in batches, so a stopped or crashed run keeps what was
captioned and "undo" puts every caption of the run back. A picture that cannot be opened, or that the tagger
fails on, is named in the report and the run goes on.

A host without taggers raises :class:`TaggingUnavailable` whose message says why each tagger the host knows of
cannot run (``Host.unavailable_taggers``: DeepBooru's model not on disk while the WebUI runs offline, the WD14
extension not installed, …) and what to do, or, from a host that gives no reasons (the standalone app), that
captioning needs the WebUI; either way that captions can still be written by hand.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

from lib_trainer.dataset.captions.caption_set import CaptionSet
from lib_trainer.dataset.captions.journal import BulkEdit, EditLabel, EditResult, journal_path_for
from lib_trainer.dataset.captions.sidecar import CAPTION_EXTENSION, read_tags
from lib_trainer.dataset.captions.tags import join_tags, merge_tags, parse_tags
from lib_trainer.hosts.base import HostError, TaggerInfo, TaggerUnavailable
from lib_trainer.common.i18n import tr
from lib_trainer.trainer.folders import open_rgb

__all__ = ["EXISTING_MODES", "TaggingUnavailable", "TaggingReport", "available_taggers", "unavailable_taggers",
           "no_tagger_message", "unavailable_note", "caption_pictures", "combine"]

EXISTING_MODES = ("ignore", "keep", "prepend", "append")

Progress = Callable[[int, int, Optional[Path]], Any]


class TaggingUnavailable(HostError):
    """The host cannot caption (no taggers, or not the one asked for); nothing was changed."""


@dataclass
class TaggingReport:
    tagger_id: str
    existing: str
    total: int  # pictures asked for
    captioned: List[Path] = field(default_factory=list)  # caption file written
    unchanged: List[Path] = field(default_factory=list)  # tagged, and the caption already said exactly that
    kept: List[Path] = field(default_factory=list)  # had a caption and "keep" left it alone
    no_tags: List[Path] = field(default_factory=list)  # the tagger found nothing (above the threshold)
    failed: List[Tuple[Path, str]] = field(default_factory=list)  # could not be opened or tagged, and why
    stopped: bool = False
    seconds: float = 0.0
    edit: Optional[EditResult] = None

    @property
    def done(self) -> int:
        return len(self.captioned) + len(self.unchanged) + len(self.kept) + len(self.no_tags) + len(self.failed)

    def summary(self) -> str:
        """One paragraph for the person: what was captioned, what was left, what failed and why."""
        parts = [tr("Captioned {n} of {total} picture(s) in {seconds:.0f} s.", n=len(self.captioned),
                    total=self.total, seconds=self.seconds)]
        if self.unchanged:
            parts.append(tr("{n} already had exactly these tags.", n=len(self.unchanged)))
        if self.kept:
            parts.append(tr("{n} kept their existing caption.", n=len(self.kept)))
        if self.no_tags:
            parts.append(tr("The tagger found no tag for {n} (try a lower threshold): {names}.",
                            n=len(self.no_tags), names=_names(self.no_tags)))
        if self.failed:
            shown = "; ".join(f"{p.name}: {why}" for p, why in self.failed[:5])
            if len(self.failed) > 5:
                shown += " " + tr("and {count} more", count=len(self.failed) - 5)
            parts.append(tr("{n} failed: {details}", n=len(self.failed), details=shown))
        if self.stopped:
            parts.append(tr("Stopped after {done} of {total} picture(s); the captions written so far stay.",
                            done=self.done, total=self.total))
        if self.captioned:
            parts.append(tr("Undo puts the previous captions back."))
        return " ".join(parts)


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (" …" if len(paths) > limit else "")


def no_tagger_message(host: Any = None) -> str:
    """Why ``host`` offers no tagger (each tagger it knows of, why and what to do), and that captions can still be
    written by hand."""
    reasons = unavailable_taggers(host) if host is not None else []
    if not reasons:
        return tr("Captioning with a tagger needs the WebUI (DeepBooru, BLIP or the WD14 tagger extension); this "
                  "host has none. You can still write and edit captions by hand and use the tag tools.")
    return "\n".join([tr("No tagger can caption here yet:"), _reason_lines(reasons),
                      tr("You can still write and edit captions by hand and use the tag tools.")])


def unavailable_note(host: Any) -> str:
    """The taggers ``host`` knows of but does not offer beside those it offers, and why; "" when none."""
    reasons = unavailable_taggers(host)
    return "\n".join([tr("Not offered here:"), _reason_lines(reasons)]) if reasons else ""


def _reason_lines(reasons: Sequence[TaggerUnavailable]) -> str:
    return "\n".join(f"• {r.title}: {r.reason}" for r in reasons)


def unavailable_taggers(host: Any) -> List[TaggerUnavailable]:
    """The taggers the host left out, with why; [] when it gives no reasons (or cannot)."""
    lister = getattr(host, "unavailable_taggers", None)
    if not callable(lister):
        return []
    try:
        return list(lister())
    except Exception:
        return []


def available_taggers(host: Any) -> List[TaggerInfo]:
    """The host's taggers; [] when it has none or cannot list them."""
    try:
        return list(host.taggers())
    except Exception:
        return []


def combine(new: Sequence[str], old: Sequence[str], existing: str, trigger_word: Optional[str] = None) -> List[str]:
    """The caption for a picture with tags ``old`` that the tagger described as ``new``."""
    if existing == "prepend":
        return merge_tags(new, old, trigger_word=trigger_word)
    if existing == "append":
        return merge_tags(old, new, trigger_word=trigger_word)
    return merge_tags(new, [], trigger_word=trigger_word)


def _stopped(stop: Any) -> bool:
    if stop is None:
        return False
    is_set = getattr(stop, "is_set", None)
    return bool(is_set() if callable(is_set) else stop())


def caption_pictures(
    host: Any,
    tagger_id: str,
    pictures: Union[CaptionSet, Iterable[Union[str, os.PathLike]]],
    *,
    threshold: Optional[float] = None,
    existing: str = "ignore",
    trigger_word: Optional[str] = None,
    progress: Optional[Progress] = None,
    stop: Any = None,
    extension: str = CAPTION_EXTENSION,
    underscores_to_spaces: bool = False,
    journal: Optional[Union[str, os.PathLike]] = None,
) -> TaggingReport:
    """Caption ``pictures`` (a :class:`CaptionSet`, or picture paths) with the host's tagger ``tagger_id``.

    ``threshold``: the tagger's confidence threshold (0–1); None uses the tagger's default; ignored by taggers
    without one. ``progress(done, total, picture)`` is called after each picture; ``stop`` (a
    ``threading.Event`` or a callable returning True) ends the run before the next picture. ``extension`` and
    ``journal`` default to the caption set's (for paths: ``.txt`` and the dataset's journal), and so does
    ``trigger_word`` when it is None.
    Raises :class:`TaggingUnavailable` (nothing changed) when the host has no such tagger, ``ValueError`` for a
    bad mode or threshold, :class:`lib_trainer.dataset.captions.CaptionBusy` while another bulk edit runs.
    """
    if existing not in EXISTING_MODES:
        raise ValueError(tr("Unknown mode for existing captions: {mode}; use one of: {modes}.", mode=existing,
                            modes=", ".join(EXISTING_MODES)))
    if isinstance(pictures, CaptionSet):
        extension = pictures.extension
        journal = journal or pictures.journal
        if trigger_word is None:
            trigger_word = pictures.trigger_word
        pictures = pictures.pictures()
    paths = [Path(os.path.abspath(p)) for p in pictures]
    report = TaggingReport(tagger_id=tagger_id, existing=existing, total=len(paths))

    taggers = available_taggers(host)
    if not taggers:
        raise TaggingUnavailable(no_tagger_message(host))
    info = next((t for t in taggers if t.id == tagger_id), None)
    if info is None:
        raise TaggingUnavailable(tr("The tagger {id} is not available; choose one of: {ids}.", id=tagger_id,
                                    ids=", ".join(t.title for t in taggers)))
    if threshold is None:
        threshold = info.default_threshold
    if not info.uses_threshold:
        threshold = None
    elif threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(tr("The threshold must be between 0 and 1, got {value}.", value=threshold))
    if not paths:
        return report
    if journal is None:
        journal = journal_path_for(os.path.commonpath([str(p.parent) for p in paths]))
    trigger = join_tags(parse_tags(trigger_word)) or None

    started = time.monotonic()
    edit = BulkEdit(journal, "caption", EditLabel("Caption with {tagger}", {"tagger": info.title}),
                    extension=extension, flush_every=16)
    with edit:
        for index, picture in enumerate(paths):
            if _stopped(stop):
                report.stopped = True
                break
            _caption_one(host, info, picture, threshold, existing, trigger, extension, underscores_to_spaces,
                         edit, report)
            if progress is not None:
                progress(index + 1, len(paths), picture)
    report.edit = edit.result
    report.seconds = time.monotonic() - started
    return report


def _caption_one(host: Any, info: TaggerInfo, picture: Path, threshold: Optional[float], existing: str,
                 trigger: Optional[str], extension: str, underscores_to_spaces: bool, edit: BulkEdit,
                 report: TaggingReport) -> None:
    old = read_tags(picture, extension)
    if existing == "keep" and old:
        report.kept.append(picture)
        return
    try:
        image = open_rgb(picture)
    except Exception as exc:
        report.failed.append((picture, tr("cannot be opened ({error})", error=_error_text(exc))))
        return
    try:
        raw = host.tag(info.id, image, threshold)
    except Exception as exc:
        report.failed.append((picture, tr("the tagger failed: {error}", error=_error_text(exc))))
        return
    finally:
        image.close()
    new = parse_tags([str(t) for t in (raw or [])], underscores_to_spaces=underscores_to_spaces)
    if not new:
        report.no_tags.append(picture)
        return
    tags = combine(new, old, existing, trigger)
    if edit.stage(picture, tags):
        report.captioned.append(picture)
    else:
        report.unchanged.append(picture)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__
