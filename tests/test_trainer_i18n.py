"""The trainer's messages in the person's language: the job runner passes it (TRAIN_TOOLS_LANG), the trainer's
__main__ sets it, and warnings and errors (config, dataset, training) arrive in it; the events stay the same
machine-readable records (event kind, fields such as path), only the message text is translated."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_trainer.common import i18n
from tests.trainer_fixtures import (
    fast_trainer,  # noqa: F401  (fixture)
    make_config,
    tiny_sd1,  # noqa: F401  (fixture)
    train,
)

ROOT = Path(__file__).resolve().parents[1]
ZH = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))


@pytest.fixture
def chinese():
    i18n.set_language("zh_CN")
    yield
    i18n.set_language(None)


@pytest.mark.usefixtures("fast_trainer")
def test_a_run_in_chinese_warns_in_chinese(tiny_sd1, tmp_path, chinese):
    concept = tmp_path / "train" / "5_tt_dog"
    result = train(make_config(tmp_path, tiny_sd1, full_fp16=True, bucket_no_upscale=True, mixed_precision="bf16",
                               network_train_unet_only=True)).assert_ok()
    (concept / "broken.png").write_bytes(b"")  # after the run: the next one skips it
    warnings = result.warnings
    expected = [ZH["{key} is not done here: the network trains in fp32 (mixed precision applies to the model), which "
                   "takes a little more memory; the file's metadata says ss_full_fp16 = False"].format(key="full_fp16"),
                ZH["bucket_no_upscale needs enable_bucket = true; without buckets every picture is scaled to the "
                   "resolution"]]
    for message in expected:
        assert message in warnings, warnings
    if not torch.cuda.is_available():
        assert "mixed_precision=bf16 需要 CUDA GPU；在 CPU 上以 fp32 训练" in warnings, warnings
    again = train(make_config(tmp_path, tiny_sd1, network_train_unet_only=True, output_dir=str(tmp_path / "out2")))
    skipped = [e for e in again.of("warning") if e.get("path") == str(concept / "broken.png")]
    assert skipped and skipped[0]["message"] == f"已跳过 {concept / 'broken.png'}：空文件", skipped


def test_config_errors_in_chinese(tiny_sd1, tmp_path, chinese):
    result = train(make_config(tmp_path, tiny_sd1, network_args=["dorra_wd=True"], clip_skip=0))
    assert result.code == 2 and [e["event"] for e in result.events] == ["error"]
    assert "clip_skip 必须大于等于 1" in result.error and "不读取 network_args dorra_wd" in result.error, result.error
    assert "; " in result.error  # the problems stay apart as the tab splits them (presets.validation_problems)


def test_the_trainer_process_speaks_the_language_it_is_given(tmp_path):
    from lib_trainer import deps

    config = tmp_path / "config.toml"
    config.write_text('pretrained_model_name_or_path = "x.safetensors"\nxformers = true\nnetwork_dim = 0\n'
                      f'train_data_dir = "{(tmp_path / "train").as_posix()}"\n'
                      f'output_dir = "{(tmp_path / "out").as_posix()}"\n', encoding="utf-8")
    env = dict(deps.trainer_env(sys.executable), TRAIN_TOOLS_LANG="zh_CN")
    proc = subprocess.run([sys.executable, "-m", "lib_trainer.trainer", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [e["event"] for e in events] == ["warning", "error"], events
    assert events[0]["message"] == "配置键 'xformers' 被忽略：注意力总是使用 PyTorch SDPA"
    assert "network_dim 至少为 1" in events[1]["message"]
    # without the variable: English, as before
    env.pop("TRAIN_TOOLS_LANG")
    proc = subprocess.run([sys.executable, "-m", "lib_trainer.trainer", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[0]["message"] == "config key 'xformers' is ignored: attention always uses PyTorch SDPA"


def test_the_job_runner_passes_the_language(chinese):
    from lib_trainer.jobs.process import trainer_env

    assert trainer_env(sys.executable, None, None)["TRAIN_TOOLS_LANG"] == "zh_CN"
    i18n.set_language(None)
    assert trainer_env(sys.executable, None, None)["TRAIN_TOOLS_LANG"] == ""
