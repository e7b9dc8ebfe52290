""""Remove these tags so the LoRA learns them": the constant traits of a preset's kind (hair and eye colours for a
character, medium and rendering tags for a style, colours and materials for a product) that most pictures carry.
Standard library only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from lib_trainer.common.i18n import tr
from lib_trainer.dataset.captions.tags import parse_tags, tag_frequency, tag_key

# ---- "remove these tags so the LoRA learns them" -----------------------------------------------------------------
PRESET_KINDS = ("character", "person", "style", "product", "general")


def preset_kind(preset: Optional[str]) -> str:
    """The kind of subject a preset name trains: ``character`` (anime characters), ``person`` (real persons),
    ``style``, ``product`` (objects) or ``general`` when the name says none of these."""
    name = (preset or "").casefold()
    for kind, words in (("style", ("style", "art")),
                        ("product", ("product", "object", "item")),
                        ("person", ("person", "real", "photo", "face", "human", "people")),
                        ("character", ("character", "anime", "chara"))):
        if any(re.search(rf"(^|[^a-z]){re.escape(w)}", name) for w in words):
            return kind
    return "general"


_COLOURS = (
    "black|white|blonde|blond|brown|red|blue|green|purple|pink|orange|yellow|grey|gray|silver|aqua|"
    "light brown|light blue|dark blue|dark brown|light purple|dark green|dark|pale|multicolored|two-tone|"
    "gradient|streaked|colored|tan|golden|gold"
)

_TRAIT_NOUNS = "hair|eyes|pupils|skin|eyebrows|eyelashes|ears|tail|horns|wings|fur|sclera|inner hair"


# Constant traits of a character or a person: what the trigger word should carry instead of the caption. Each
# pattern is matched against the whole normalised tag (spaces, lower case).
_CHARACTER_TRAITS = [
    rf"(?:(?:{_COLOURS}) ){{1,2}}(?:{_TRAIT_NOUNS})",
    r"(?:very long|long|medium|short|very short) hair",
    r"(?:[a-z]+ )?bangs", r"(?:side |high |low )?ponytail", r"(?:low )?twintails", r"(?:twin |side |single )?braids?",
    r"(?:single |double )?hair bun", r"ahoge", r"sidelocks", r"drill hair", r"hime cut", r"bob cut", r"hair intakes",
    r"hair between eyes", r"hair over one eye", r"heterochromia", r"freckles", r"mole(?: under (?:eye|mouth))?",
    r"beard", r"mustache", r"facial hair", r"stubble", r"fangs?", r"dark-skinned (?:female|male)",
    r"(?:pointy|animal|cat|fox|dog|wolf|rabbit|horse|elf) ears", r"horns", r"(?:[a-z]+ )?tail", r"(?:[a-z]+ )?wings",
    r"halo", r"(?:flat|small|medium|large|huge) (?:chest|breasts)", r"slit pupils", r"tsurime", r"tareme",
]

_STYLE_TRAITS = [
    r"traditional media", r"faux traditional media", r"watercolor(?: \(medium\))?", r"oil painting(?: \(medium\))?",
    r"painting(?: \(medium\))?", r"acrylic paint(?: \(medium\))?", r"ink(?: \(medium\))?", r"sketch", r"lineart",
    r"monochrome", r"greyscale", r"realistic", r"photorealistic", r"anime coloring", r"flat color", r"cel shading",
    r"pixel art", r"chibi", r"3d", r"pastel colors", r"limited palette", r"impressionism", r"ukiyo-e",
    r"retro artstyle", r"\d{4}s \(style\)", r"official art", r"comic", r"halftone", r"chromatic aberration",
    r"film grain", r"colored pencil \(medium\)", r"graphite \(medium\)", r"marker \(medium\)", r"concept art",
]

_PRODUCT_TRAITS = [
    # a colour of the thing itself, not of its surroundings ("red bottle", not "white background")
    rf"(?!.*\b(?:background|theme|sky|wall|floor|border|outline|lighting|light)\b)"
    rf"(?:(?:{_COLOURS}) ){{1,2}}[a-z][a-z -]*",
    r"metal", r"metallic", r"wooden", r"wood", r"leather", r"glass", r"plastic", r"ceramic", r"fabric", r"logo",
    r"brand name(?: imitation)?", r"glossy", r"matte", r"transparent", r"shiny",
]

_TRAITS = {
    "character": _CHARACTER_TRAITS,
    "person": _CHARACTER_TRAITS,
    "style": _STYLE_TRAITS,
    "product": _PRODUCT_TRAITS,
    "general": _CHARACTER_TRAITS + _PRODUCT_TRAITS,
}

_TRAIT_REGEX = {kind: re.compile("|".join(f"(?:{p})" for p in pats)) for kind, pats in _TRAITS.items()}
_TRAIT_WHAT = {
    "character": "a constant trait of the character",
    "person": "a constant trait of the person",
    "style": "the style itself",
    "product": "the product's own look",
    "general": "a constant trait of the subject",
}


@dataclass(frozen=True)
class TagSuggestion:
    tag: str
    count: int
    share: float  # count / pictures
    reason: str


def suggest_tags_to_remove(captions: Sequence[Sequence[str]], trigger_word: Optional[str],
                           preset: Optional[str] = "character", *, min_share: float = 0.3,
                           limit: int = 15) -> List[TagSuggestion]:
    """Tags to remove so that the trigger word learns them instead of the caption carrying them.

    The seeds' advice for a character LoRA: drop "blue eyes", "long hair" and other constant traits; what
    stays in the caption is what may change between pictures (clothes, pose, background). The heuristic: a
    tag is suggested when it matches the small list of constant-trait patterns for the preset's kind
    (hair/eye/skin colours, hairstyles and body features for characters and persons; medium and rendering
    tags for styles; colours and materials for products) and at least ``min_share`` of the pictures have it.
    Most frequent first; the trigger word is never suggested.
    """
    kind = preset_kind(preset)
    regex = _TRAIT_REGEX[kind]
    total = len(captions)
    if total == 0:
        return []
    protected = {tag_key(t) for t in parse_tags(trigger_word)}
    suggestions = []
    for tc in tag_frequency(captions):
        key = tag_key(tc.tag)
        share = tc.count / total
        if key in protected or share < min_share or not regex.fullmatch(key):
            continue
        suggestions.append(TagSuggestion(
            tag=tc.tag, count=tc.count, share=share,
            reason=tr("in {count} of {total} pictures; {what}", count=tc.count, total=total,
                      what=tr(_TRAIT_WHAT[kind]))))
    return suggestions[:max(0, limit)]
