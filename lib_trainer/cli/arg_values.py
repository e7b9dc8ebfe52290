"""Parsers of option values: --set KEY=VALUE pairs, sizes, weights."""
from __future__ import annotations

import argparse
import json
from typing import Any, List, Optional, Sequence, Tuple

from lib_trainer.cli.errors import CliError, EXIT_USAGE
from lib_trainer.common.i18n import tr


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it reads as JSON (numbers, true/false, null, lists, quoted text), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(items: Optional[Sequence[str]], option: str) -> List[Tuple[str, str]]:
    pairs = []
    for item in items or []:
        if "=" not in item:
            raise CliError(tr("{option} needs KEY=VALUE, got \"{item}\".", option=option, item=item), code=EXIT_USAGE)
        key, value = item.split("=", 1)
        if not key.strip():
            raise CliError(tr("{option} needs KEY=VALUE, got \"{item}\".", option=option, item=item), code=EXIT_USAGE)
        pairs.append((key.strip(), value))
    return pairs


def parse_size(text: str) -> Tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(tr("expected WIDTHxHEIGHT or one number, got \"{text}\"", text=text))
    return parts[0], parts[1]


def parse_weights(text: str) -> List[float]:
    try:
        return [float(w) for w in text.replace(" ", ",").split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(tr("expected numbers separated by commas, got \"{text}\"", text=text))
