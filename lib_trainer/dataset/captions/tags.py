"""Tags as text: one tag normalised (trimmed, whitespace collapsed, control characters dropped, Unicode NFC,
optionally ``_`` as spaces), two tags compared (case and ``_`` vs. space do not matter, as CLIP sees them after the
WebUI's tokenisation rules), a caption parsed into tags and joined back, tag frequencies. Standard library only.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Union

from lib_trainer.common.tags import KAOMOJI


_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\u200b\ufeff]")
_SEPARATORS = re.compile(r"[,\r\n]")


# ---- tags --------------------------------------------------------------------------------------------------
def normalize_tag(tag: str, *, underscores_to_spaces: bool = False) -> str:
    """One tag trimmed, whitespace collapsed, control characters removed, NFC; with ``underscores_to_spaces``
    ``long_hair`` becomes ``long hair`` (emoticons like ``^_^`` stay as they are)."""
    tag = _CONTROL.sub("", unicodedata.normalize("NFC", str(tag)))
    tag = _WHITESPACE.sub(" ", tag).strip()
    if underscores_to_spaces and "_" in tag and tag not in KAOMOJI:
        tag = _WHITESPACE.sub(" ", tag.replace("_", " ")).strip()
    return tag


def tag_key(tag: str) -> str:
    """What two tags must share to count as the same tag: case and ``_`` vs. space do not matter."""
    return normalize_tag(tag, underscores_to_spaces=True).casefold()


def parse_tags(text: Union[str, Iterable[str], None], *, underscores_to_spaces: bool = False) -> List[str]:
    """Tags of a caption (``"a, b\\nc"`` → ``["a", "b", "c"]``), each normalised, empty ones dropped.

    A list of strings is accepted too; each item may itself hold several comma-separated tags.
    """
    if text is None:
        return []
    parts: Iterable[str] = [text] if isinstance(text, str) else text
    tags: List[str] = []
    for part in parts:
        for piece in _SEPARATORS.split(str(part)):
            tag = normalize_tag(piece, underscores_to_spaces=underscores_to_spaces)
            if tag:
                tags.append(tag)
    return tags


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def keep_tokens_for(trigger_word: str) -> int:
    """The ``keep_tokens`` value that protects ``trigger_word`` when it is the caption's first tag(s): the number
    of comma-separated tags it is made of (``"sks dog"`` → 1, ``"sks, dog"`` → 2)."""
    return len(parse_tags(trigger_word))


def dedupe_tags(tags: Iterable[str]) -> List[str]:
    seen = set()
    out = []
    for tag in tags:
        key = tag_key(tag)
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def merge_tags(first: Sequence[str], second: Sequence[str], *, trigger_word: Optional[str] = None) -> List[str]:
    """``first`` then the tags of ``second`` not already there; with ``trigger_word`` its tags lead and are not
    repeated later."""
    head = parse_tags(trigger_word) if trigger_word else []
    return dedupe_tags([*head, *first, *second])


@dataclass(frozen=True)
class TagCount:
    tag: str  # the most common spelling
    count: int  # pictures with the tag


def tag_frequency(captions: Iterable[Sequence[str]]) -> List[TagCount]:
    """Each tag (in its most common spelling) with the number of pictures that have it, most frequent first."""
    counts: Counter = Counter()
    spellings: Dict[str, Counter] = {}
    for tags in captions:
        seen = set()
        for tag in tags:
            key = tag_key(tag)
            spellings.setdefault(key, Counter())[tag] += 1
            if key not in seen:
                seen.add(key)
                counts[key] += 1
    result = [TagCount(spellings[key].most_common(1)[0][0], n) for key, n in counts.items()]
    result.sort(key=lambda tc: (-tc.count, tag_key(tc.tag), tc.tag))
    return result
