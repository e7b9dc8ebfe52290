"""Every difference between gradio 3.41 (AUTOMATIC1111 1.10) and gradio 4.x (Forge), in one place.

The tab is written against the subset both versions share; what differs is routed through here:

* the keyword of an event's JavaScript (``_js`` in 3.x, ``js`` in 4.x);
* what an upload hands to a callback (3.x: temp-file wrappers with ``orig_name``; 4.x: path strings, or
  ``FileData``-like objects);
* dropdown and radio choices: only plain strings in 3.41 (no ``(label, value)`` pairs), so labels are mapped
  back to values here;
* which event reports a person's edit of a field (``blur`` where it exists, else ``input``);
* turning the queue on (``concurrency_count`` in 3.x, ``default_concurrency_limit`` in 4.x);
* keyword arguments a component does not know in the running version are dropped (with the component's
  defaults), never passed through to fail at start-up.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gradio as gr

GRADIO_VERSION: str = getattr(gr, "__version__", "3.41.2")
GRADIO_MAJOR: int = int(GRADIO_VERSION.split(".")[0] or 3)

#: ``show_progress`` value that shows nothing while an event runs (both versions accept the string).
HIDDEN = "hidden"


def js(code: str) -> Dict[str, str]:
    """The keyword arguments that attach JavaScript ``code`` to an event listener."""
    return {"_js": code} if GRADIO_MAJOR < 4 else {"js": code}


def update(**changes: Any) -> Dict[str, Any]:
    """A property update for one output (``gr.update`` exists in both versions and returns a dict)."""
    return gr.update(**changes)


def unchanged() -> Dict[str, Any]:
    """An output left as it is."""
    return gr.update()


_accepted: Dict[type, Optional[set]] = {}


def _known_kwargs(cls: type) -> Optional[set]:
    if cls not in _accepted:
        names: set = set()
        takes_any = False
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            try:
                params = inspect.signature(init).parameters.values()
            except (TypeError, ValueError):
                continue
            for p in params:
                if p.kind is p.VAR_KEYWORD:
                    takes_any = True
                else:
                    names.add(p.name)
            break  # the most derived __init__ decides; gradio components do not forward unknown kwargs usefully
        _accepted[cls] = None if (takes_any and not names) else names
    return _accepted[cls]


def make(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` without the keyword arguments this gradio's ``cls`` does not declare."""
    known = _known_kwargs(cls)
    if known is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in known}
    return cls(*args, **kwargs)


def gallery(**kwargs: Any) -> Any:
    kwargs.setdefault("object_fit", "contain")
    kwargs.setdefault("show_share_button", False)
    return make(gr.Gallery, **kwargs)


def image_output(**kwargs: Any) -> Any:
    kwargs.setdefault("interactive", False)
    kwargs.setdefault("show_share_button", False)
    return make(gr.Image, type="pil", **kwargs)


def uploaded_files(value: Any) -> List[Tuple[str, Path]]:
    """``(original file name, path on the server)`` of each uploaded file, for either gradio's upload value."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        value = [value]
    files: List[Tuple[str, Path]] = []
    for item in value:
        if item is None:
            continue
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            files.append((path.name, path))
            continue
        if isinstance(item, dict):
            path_text = item.get("path") or item.get("name")
            original = item.get("orig_name") or path_text
        else:
            path_text = getattr(item, "path", None) or getattr(item, "name", None)
            original = getattr(item, "orig_name", None) or path_text
        if not path_text:
            continue
        files.append((Path(str(original)).name, Path(str(path_text))))
    return files


class Choices:
    """Radio/dropdown choices shown as translated labels, handed to callbacks as values.

    gradio 3.41 only takes plain strings as choices, so the components show labels and the callbacks map them
    back with :meth:`value`. ``label_of`` is called at use time, so the current language decides the labels.
    """

    def __init__(self, values: Sequence[Any], label_of: Callable[[Any], str]):
        self.values = list(values)
        self.label_of = label_of

    def labels(self) -> List[str]:
        return [self.label_of(v) for v in self.values]

    def label(self, value: Any) -> Optional[str]:
        return self.label_of(value) if value in self.values else None

    def value(self, label: Any, default: Any = None) -> Any:
        if label in self.values:  # already a value (a test, or a value that is its own label)
            return label
        for v in self.values:
            if self.label_of(v) == label:
                return v
        return default


def selected_index(evt: Any) -> Optional[int]:
    """The index a gallery ``select`` event names (an int in both versions; a list for dataframes)."""
    index = getattr(evt, "index", None)
    if isinstance(index, (list, tuple)):
        index = index[0] if index else None
    return int(index) if isinstance(index, int) else None


def edited(component: Any, typed: bool = False) -> Any:
    """The event of a person's own edit of ``component`` (never fired when a callback sets its value).

    Typed fields report when the person leaves them (``blur``) where the component has that event (3.41's
    Number and Textbox); gradio 4's Number has no ``blur``, so there it is ``input`` (each keystroke).
    """
    if typed and hasattr(component, "blur"):
        return component.blur
    return component.input


def enable_queue(blocks: Any, workers: int = 8) -> Any:
    """Turn on the queue (gr.Progress needs it) with ``workers`` events at a time (3.x: one pool for all
    events; 4.x: per event)."""
    if GRADIO_MAJOR < 4:
        return blocks.queue(concurrency_count=workers)
    return blocks.queue(default_concurrency_limit=workers)


def as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


__all__ = ["GRADIO_VERSION", "GRADIO_MAJOR", "HIDDEN", "js", "update", "unchanged", "make", "gallery",
           "image_output", "uploaded_files", "Choices", "selected_index", "edited", "enable_queue", "as_list"]

