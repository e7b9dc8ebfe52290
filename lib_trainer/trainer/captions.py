"""Caption handling at training time: shuffling, keep_tokens, tag and caption dropout.

Semantics follow kohya sd-scripts, so that a config behaves the same here and there:

* a caption is a list of tags separated by ``caption_separator`` (a comma);
* the first ``keep_tokens`` tags stay in front, in order, and are never dropped (this is how a trigger word is
  protected); when ``keep_tokens_separator`` (say ``"|||"``) occurs in the caption, the part before it is kept
  instead, whatever ``keep_tokens`` says, and a second occurrence marks a tail that stays at the end;
* the other tags are shuffled when asked and each is dropped with ``tag_dropout_rate``;
* with ``caption_dropout_rate`` the whole caption (trigger word included) becomes ``""``, which trains the
  unconditional case.

Unlike sd-scripts, the result is always normalised (runs of whitespace collapsed, empty tags removed, tags joined
with ``", "``, the keep-tokens separator never left in the text), also when nothing is shuffled or dropped. CLIP
tokenises ``"a,b"`` and ``"a, b"`` the same way, so this changes nothing the model sees except removing stray
separators.

Randomness comes only from the ``random.Random`` passed in, drawn in a fixed order (caption dropout, then shuffle,
then one draw per droppable tag), so a seeded generator gives the same captions on every run.
"""

from __future__ import annotations

import random
import re
from typing import List

__all__ = ["split_caption", "normalize_caption", "process_caption"]

_WHITESPACE = re.compile(r"\s+")


def split_caption(caption: str, separator: str = ",") -> List[str]:
    """Split ``caption`` on ``separator``; each tag stripped with inner whitespace collapsed; empty tags removed."""
    if not separator:
        raise ValueError("caption separator must not be empty")
    tags = []
    for part in caption.split(separator):
        tag = _WHITESPACE.sub(" ", part).strip()
        if tag:
            tags.append(tag)
    return tags


def normalize_caption(caption: str, separator: str = ",") -> str:
    """The caption with whitespace normalised and empty tags removed, tags joined with ``", "``."""
    return ", ".join(split_caption(caption, separator))


def _check_rate(name: str, value: float) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return rate


def process_caption(
    caption: str,
    *,
    shuffle: bool,
    keep_tokens: int,
    caption_dropout_rate: float,
    tag_dropout_rate: float,
    rng: random.Random,
    keep_tokens_separator: str = "",
    caption_separator: str = ",",
    epoch: int = 0,
    caption_dropout_every_n_epochs: int = 0,
) -> str:
    """Return the caption to train on for one use of one picture.

    ``epoch`` is 1-based (as in sd-scripts); with ``caption_dropout_every_n_epochs = n > 0`` every n-th epoch drops
    all captions. ``rng`` must be a ``random.Random``; it is the only source of randomness.
    """
    if isinstance(keep_tokens, bool) or not isinstance(keep_tokens, int) or keep_tokens < 0:
        raise ValueError(f"keep_tokens must be a whole number of tags, 0 or more, got {keep_tokens!r}")
    caption_dropout_rate = _check_rate("caption_dropout_rate", caption_dropout_rate)
    tag_dropout_rate = _check_rate("caption_tag_dropout_rate", tag_dropout_rate)
    if not isinstance(caption_dropout_every_n_epochs, int) or caption_dropout_every_n_epochs < 0:
        raise ValueError(
            f"caption_dropout_every_n_epochs must be 0 (off) or a positive whole number, "
            f"got {caption_dropout_every_n_epochs!r}"
        )
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    if caption is None:
        caption = ""

    # Whole-caption dropout first: one draw, only when the rate is in use (as sd-scripts does).
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    if caption_dropout_every_n_epochs > 0 and epoch >= 1 and epoch % caption_dropout_every_n_epochs == 0:
        return ""

    fixed_head: List[str]
    flex: List[str]
    fixed_tail: List[str] = []
    if keep_tokens_separator and keep_tokens_separator in caption:
        head, rest = caption.split(keep_tokens_separator, 1)
        if keep_tokens_separator in rest:
            rest, tail = rest.split(keep_tokens_separator, 1)
            # Any further separators in the tail are just removed.
            fixed_tail = split_caption(tail.replace(keep_tokens_separator, caption_separator), caption_separator)
        fixed_head = split_caption(head, caption_separator)
        flex = split_caption(rest, caption_separator)
    else:
        tags = split_caption(caption, caption_separator)
        fixed_head, flex = tags[:keep_tokens], tags[keep_tokens:]

    if shuffle:
        rng.shuffle(flex)
    if tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= tag_dropout_rate]

    return ", ".join(fixed_head + flex + fixed_tail)
