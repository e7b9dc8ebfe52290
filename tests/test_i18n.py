"""Every user-visible message has a Chinese translation, and translations keep the template's fields."""
import ast
import json
import string
from pathlib import Path

import pytest

from lib_trainer.common import i18n

ROOT = Path(__file__).resolve().parents[1]
WEBUI_ZH = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
PRIVATE_ZH = json.loads((ROOT / "lib_trainer" / "locales" / "zh_CN.json").read_text(encoding="utf-8"))
ZH = {**WEBUI_ZH, **PRIVATE_ZH}


def tr_templates():
    """(file, line, template) of every tr("literal", …) call in lib_trainer (the trainer program included: it writes
    its events in the language the job runner passes it) and scripts/."""
    found = []
    for path in sorted((ROOT / "lib_trainer").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tr"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found.append((path.relative_to(ROOT).as_posix(), node.lineno, node.args[0].value))
    return found


def fields(template):
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_message_has_a_chinese_translation():
    missing = [f"{f}:{line}: {t!r}" for f, line, t in tr_templates() if t not in ZH]
    assert not missing, ("add these to localizations/zh_CN.json (labels of two words or fewer: to "
                         "lib_trainer/locales/zh_CN.json):\n" + "\n".join(missing))


def test_short_labels_stay_out_of_the_file_the_webui_merges_into_every_page():
    # The WebUI merges every extension's localizations/zh_CN.json: a common label there ("Seed") would replace
    # the person's own translation of the WebUI's labels on every tab.
    short = [k for k in WEBUI_ZH if len(k.split()) <= 2 and "{" not in k]
    assert not short, f"move these to lib_trainer/locales/zh_CN.json: {short}"
    assert not set(WEBUI_ZH) & set(PRIVATE_ZH)


def test_translations_keep_the_fields():
    wrong = [t for t in ZH if fields(ZH[t]) != fields(t)]
    assert not wrong, wrong


def test_tr_translates_and_formats():
    i18n.set_language("zh_CN")
    try:
        assert i18n.tr("Train Tools") == "训练工具"
        assert i18n.current_language() == "zh_CN"
    finally:
        i18n.set_language(None)
    assert i18n.tr("Project \"{project}\" does not exist.", project="狗") == 'Project "狗" does not exist.'
    assert i18n.current_language() is None


def test_a_broken_translation_falls_back_to_english(monkeypatch):
    monkeypatch.setattr(i18n, "_table", {"{n} files": "{count} 个文件"})
    assert i18n.tr("{n} files", n=3) == "3 files"
