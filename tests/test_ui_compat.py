"""The gradio 3.41 / 4.x differences the tab routes through lib_trainer.ui.compat, and cheap imports."""
import subprocess
import sys
import tempfile
from pathlib import Path

import gradio as gr

from lib_trainer.ui import compat

ROOT = Path(__file__).resolve().parents[1]


def test_uploads_of_either_gradio_give_name_and_path(tmp_path):
    a = tmp_path / "gradio-cache" / "abc" / "可爱的狗.png"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"x")
    wrapper = tempfile.NamedTemporaryFile(delete=False, dir=tmp_path)  # gradio 3.41 hands these over
    wrapper.name = str(a)
    wrapper.orig_name = str(a)
    as_41 = compat.uploaded_files([wrapper])
    as_4x = compat.uploaded_files([str(a)])
    as_dict = compat.uploaded_files([{"path": str(a), "orig_name": "dog.png"}])
    assert as_41 == as_4x == [("可爱的狗.png", a)]
    assert as_dict == [("dog.png", a)]
    assert compat.uploaded_files(None) == [] and compat.uploaded_files(str(a)) == [("可爱的狗.png", a)]


def test_choices_map_labels_back_to_values():
    choices = compat.Choices(("center", "none"), lambda v: {"center": "Center crop", "none": "No crop"}[v])
    assert choices.labels() == ["Center crop", "No crop"]
    assert choices.value("No crop") == "none"
    assert choices.value("none") == "none"  # a value passes through
    assert choices.value("???", "center") == "center"
    assert choices.label("center") == "Center crop" and choices.label("missing") is None


def test_javascript_keyword_matches_the_running_gradio():
    kwargs = compat.js("() => []")
    assert list(kwargs) == (["_js"] if compat.GRADIO_MAJOR < 4 else ["js"])
    with gr.Blocks():
        button = gr.Button("x")
        button.click(None, None, None, **kwargs)  # accepted by this gradio


def test_unknown_component_keywords_are_dropped_not_fatal():
    with gr.Blocks():
        gallery = compat.gallery(label="g", columns=3, no_such_option=True, elem_id="train_tools_test_gallery")
        image = compat.image_output(label="i", height=100)
    assert gallery.elem_id == "train_tools_test_gallery"
    assert image.type == "pil" and image.interactive is False


def test_selected_index_reads_gallery_and_table_events():
    class Event:
        def __init__(self, index):
            self.index = index

    assert compat.selected_index(Event(3)) == 3
    assert compat.selected_index(Event([2, 0])) == 2
    assert compat.selected_index(Event(None)) is None


def test_importing_the_ui_package_pulls_in_no_heavy_module():
    code = ("import sys, lib_trainer.ui, lib_trainer.ui.context, lib_trainer.app; "
            "bad = [m for m in ('torch', 'diffusers', 'gradio', 'transformers') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_building_the_panels_does_not_import_torch():
    code = ("import sys; from lib_trainer.ui import tab, context; "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
