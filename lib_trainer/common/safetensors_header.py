"""The JSON header of a .safetensors file, read without loading a tensor (standard library only).

The format: 8 bytes little-endian header length, the header (JSON: tensor name -> dtype/shape/offsets, plus an
optional ``__metadata__`` of strings), then the tensor data.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Union

MAX_HEADER_BYTES = 100 * 2**20  # real headers are kilobytes; anything this large is not a safetensors file


class NotSafetensors(ValueError):
    """The file is not a readable .safetensors file; the message says why."""


@dataclass
class SafetensorsHeader:
    entries: Dict[str, Any]  # tensor name -> {"dtype", "shape", "data_offsets"}
    metadata: Dict[str, str]
    data_offset: int  # where the tensor data starts in the file

    @property
    def tensor_names(self) -> List[str]:
        return list(self.entries)


def read_header(path: Union[str, os.PathLike]) -> SafetensorsHeader:
    """The parsed header of ``path``; :class:`NotSafetensors` when it is not one (OSError when unreadable)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise NotSafetensors("not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise NotSafetensors("not a safetensors file (header too large)")
        blob = fh.read(length)
    try:
        header = json.loads(blob.decode("utf-8"))
    except ValueError:
        raise NotSafetensors("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise NotSafetensors("not a safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    return SafetensorsHeader(entries=header, metadata={str(k): str(v) for k, v in meta.items()},
                             data_offset=8 + length)


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The ``__metadata__`` of a .safetensors file; {} when it has none or cannot be read."""
    try:
        return read_header(path).metadata
    except (OSError, NotSafetensors):
        return {}


def header_bytes(entries: Dict[str, Any], metadata: Dict[str, str]) -> bytes:
    """The length-prefixed header for ``entries`` and ``metadata``, padded as the format recommends (to 8 bytes)."""
    blob = json.dumps({"__metadata__": metadata, **entries}, ensure_ascii=False, separators=(",", ":"))
    data = blob.encode("utf-8")
    data += b" " * (-len(data) % 8)
    return struct.pack("<Q", len(data)) + data
