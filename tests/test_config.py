"""Presets, VRAM tiers, the version's config, checks before a run and estimates (lib_trainer/presets.py)."""
import pytest

from lib_trainer import presets, projects
from lib_trainer.common.cuda import cuda_available
from lib_trainer.trainer import schema
from tests.trainer_fixtures import write_picture


@pytest.fixture
def version(tmp_path):
    ws = projects.Workspace(tmp_path / "ws")
    v = ws.create_project("可爱的狗").version("v1")
    concept = v.train_dir / "10_dog"
    concept.mkdir(parents=True)
    for i in range(5):
        write_picture(concept / f"{i}.png", (64, 64), seed=i)  # the estimate counts what the trainer reads
        (concept / f"{i}.txt").write_text("dog", encoding="utf-8")
    return v


@pytest.mark.parametrize("preset", presets.PRESETS)
@pytest.mark.parametrize("tier", presets.VRAM_TIERS)
@pytest.mark.parametrize("arch", presets.ARCHES)
def test_every_preset_and_tier_gives_a_valid_config(version, tmp_path, preset, tier, arch):
    model = tmp_path / "base.safetensors"
    model.write_bytes(b"x")
    cfg = presets.build_config(presets.VersionPaths.of(version), str(model), arch, preset, tier)
    schema.validate(cfg)
    assert presets.check(cfg) == []
    w, h = cfg.resolution_wh
    assert w == h == (768 if arch == "sdxl" and tier == 6 else presets.default_resolution(arch))
    assert cfg.v_parameterization == (arch == "sd2-v")
    assert cfg.output_dir == str(version.checkpoints_dir) and cfg.output_name == version.output_name
    assert cfg.events_file == str(version.events_path)
    assert cfg.save_every_n_epochs == 1 and cfg.save_state
    if arch == "sdxl":
        assert cfg.clip_skip is None and cfg.no_half_vae
    # Round trip through TOML: the config can be re-run anywhere.
    path = tmp_path / "c.toml"
    schema.save_config(cfg, path)
    assert schema.load_config(path)[0] == cfg


def test_tiers_trade_memory_for_speed(version, tmp_path):
    def cfg(tier):
        return presets.build_config(presets.VersionPaths.of(version), "m", "sd1", "person", tier, cuda=True)
    assert cfg(6).gradient_checkpointing and cfg(6).train_batch_size == 1 and cfg(6).optimizer_type == "AdamW8bit"
    assert not cfg(24).gradient_checkpointing and cfg(24).train_batch_size > cfg(8).train_batch_size
    est = [presets.estimate(cfg(t), "sd1").vram_gb for t in (6, 12, 24)]
    assert est[0] < 6 and est[1] < 12 and est[2] < 24


def test_overrides_win_and_reg_folder_is_used_when_present(version):
    (version.reg_dir / "1_dog").mkdir(parents=True)
    cfg = presets.build_config(presets.VersionPaths.of(version), "m", "sd1", "style", 12,
                              overrides={"network_dim": 4, "max_train_epochs": 3, "clip_skip": None},
                              sample_prompt="sks dog")
    assert cfg.network_dim == 4 and cfg.max_train_epochs == 3 and cfg.conv_dim == 8
    assert cfg.reg_data_dir == str(version.reg_dir)
    assert (version.samples_dir / "prompts.txt").read_text(encoding="utf-8").startswith("sks dog --w 512 --h 512")
    with pytest.raises(schema.ConfigError, match="unknown config key"):
        presets.build_config(presets.VersionPaths.of(version), "m", "sd1", "style", 12, overrides={"netwrok_dim": 4})
    with pytest.raises(schema.ConfigError, match="Unknown preset"):
        presets.preset_values("cat", 12, "sd1")


def test_check_names_each_problem_beside_its_field(version, tmp_path):
    cfg = presets.build_config(presets.VersionPaths.of(version), str(tmp_path / "gone.safetensors"), "sd1", "person", 8,
                              overrides={"resolution": "500,512", "network_alpha": 0})
    fields = {p.field: p.message for p in presets.check(cfg)}
    assert "does not exist" in fields["pretrained_model_name_or_path"]
    assert "multiples of 64" in fields["resolution"]
    assert "Alpha" in fields["network_alpha"]
    empty = projects.Workspace(tmp_path / "ws2").create_project("x").version("v1")
    cfg = presets.build_config(presets.VersionPaths.of(empty), "", "sd1", "person", 8)
    fields = {p.field: p.message for p in presets.check(cfg)}
    assert "Choose a base model" in fields["pretrained_model_name_or_path"]
    assert "dataset is empty" in fields["dataset"]


def test_estimate_counts_steps_and_uses_a_measured_speed(version):
    cfg = presets.build_config(presets.VersionPaths.of(version), "m", "sd1", "person", 8,
                              overrides={"max_train_epochs": 4, "train_batch_size": 2})
    est = presets.estimate(cfg, "sd1", cuda=True)
    assert "no NVIDIA GPU" in presets.estimate(cfg, "sd1", cuda=False).basis
    assert (est.uses_per_epoch, est.steps_per_epoch, est.epochs, est.steps) == (50, 25, 4, 100)
    assert est.seconds > 0 and "typical" in est.basis
    measured = presets.estimate(cfg, "sd1", measured_it_per_s=2.0, measured_batch=2)
    assert measured.seconds == 50 and "measured" in measured.basis
    assert presets.describe_estimate(measured).endswith("about 50s at the speed measured on this machine")
    text = presets.describe_estimate(measured)
    assert text.startswith("5 pictures × 10 repeats = 50 picture uses per epoch · 4 epochs × 25 steps at batch 2 = "
                           "100 steps · ")
    one = presets.estimate(presets.build_config(presets.VersionPaths.of(version), "m", "sd1", "person", 8,
                                                overrides={"max_train_epochs": 1, "train_batch_size": 2}), "sd1")
    assert "· 1 epoch of 25 steps at batch 2 = 25 steps ·" in presets.describe_estimate(one)
    assert presets.last_speed([{"event": "start", "batch_size": 2}, {"event": "step", "it_per_s": 1.5}]) == (1.5, 2)
    assert presets.format_duration(3725) == "1h 02m"


def test_without_a_gpu_the_8bit_optimizer_becomes_adamw_unless_chosen(version):
    paths = presets.VersionPaths.of(version)
    assert presets.build_config(paths, "m", "sd1", "person", 8, cuda=False).optimizer_type == "AdamW"
    chosen = presets.build_config(paths, "m", "sd1", "person", 8, cuda=False, overrides={"optimizer_type": "AdamW8bit"})
    assert chosen.optimizer_type == "AdamW8bit"
    assert presets.build_config(paths, "m", "sd1", "person", 8, cuda=True).optimizer_type == "AdamW8bit"
    assert isinstance(cuda_available(), bool)


def test_regularization_pictures_are_read_and_double_the_steps(version):
    paths = presets.VersionPaths.of(version)
    two_epochs = {"max_train_epochs": 2, "train_batch_size": 1}
    plain = presets.build_config(paths, "m", "sd1", "person", 8, overrides=two_epochs)
    assert plain.reg_data_dir is None
    (version.reg_dir / "1_dog").mkdir(parents=True)
    assert presets.build_config(paths, "m", "sd1", "person", 8).reg_data_dir is not None
    assert presets.estimate(plain, "sd1").steps == 50 * 2  # an empty reg folder adds nothing
    write_picture(version.reg_dir / "1_dog" / "other.png", (64, 64), seed=9)
    with_reg = presets.build_config(paths, "m", "sd1", "person", 8, overrides=two_epochs)
    assert with_reg.reg_data_dir == str(version.reg_dir)
    est = presets.estimate(with_reg, "sd1")
    assert (est.uses_per_epoch, est.steps) == (100, 200)  # as many reg uses per epoch as training uses
    assert "5 pictures × their folders' repeats = 100 picture uses per epoch" in presets.describe_estimate(est)
