"""The training form: presets and tiers fill it, edits are kept, checks show beside their fields, Train writes the
config and queues the job."""
from lib_trainer.trainer.schema import load_config
from lib_trainer.ui import compat, dataset_panel, train_fields, train_panel, version_settings
from tests.ui_support import make_context, pictures, value

PRESET = train_panel.PRESET_CHOICES
VRAM = train_panel.VRAM_CHOICES
ERRORS = train_panel.ERROR_KEYS


class QueueRecorder:
    """Records what the tab queues (the job runner itself is tested in test_jobs.py and test_ui_runs.py)."""

    def __init__(self):
        self.submitted = []

    def jobs(self):
        return []

    def submit(self, project, version):
        self.submitted.append((project, version))

        class Job:
            position = len(self.submitted)
        return Job()


def prepared(tmp_path, runner=None, pictures_too=True):
    ctx = make_context(tmp_path, runner=runner)
    ctx.workspace.create_project("dog")
    if pictures_too:
        dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 3)], "")
        dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 2)
    return ctx, ctx.version("dog", "v1")


def refreshed_form(ctx):
    out = train_panel.on_refresh(ctx, "dog", "v1")
    base, preset, vram = value(out[0]), out[1], out[2]
    values = list(out[3:3 + len(train_fields.KEYS)])
    return base, preset, vram, values


def set_field(values, key, new):
    values[train_fields.KEYS.index(key)] = new
    return values


def errors_of(out):
    return dict(zip(ERRORS, out[1:]))


def test_defaults_come_from_the_preset_tier_and_base_model(tmp_path, monkeypatch):
    monkeypatch.setattr(train_panel, "cuda_available", lambda: True)  # what an NVIDIA machine gets
    ctx, version = prepared(tmp_path)
    base, preset, vram, values = refreshed_form(ctx)
    form = train_fields.form_to_dict(values)
    assert base == "base.safetensors" and preset == PRESET.label("character") and vram == VRAM.label(8)
    assert form["max_train_epochs"] == 10 and form["network_dim"] == 16 and form["resolution"] == 512
    assert form["train_batch_size"] == 2 and form["optimizer_type"] == "AdamW8bit" and form["clip_skip"] == 2
    assert form["mixed_precision"] == train_fields.choice_label("mixed_precision", "fp16")
    assert form["network_type"] == train_fields.network_type_label("lora")
    estimate = train_panel.on_refresh(ctx, "dog", "v1")[3 + len(train_fields.KEYS)]
    assert "Estimate" in estimate and "30 steps" in estimate  # 3 pictures × 2 repeats / batch 2 × 10 epochs


def test_choosing_a_preset_fills_the_fields_and_keeps_the_trigger_word(tmp_path):
    ctx, version = prepared(tmp_path)
    base, _, _, values = refreshed_form(ctx)
    set_field(values, "trigger", "sks_dog")
    out = train_panel.on_preset(ctx, "dog", "v1", base, PRESET.label("style"), VRAM.label(24), *values)
    form = train_fields.form_to_dict(out[:-1])
    assert form["network_dim"] == 32 and form["train_batch_size"] == 6 and form["optimizer_type"] == "AdamW"
    assert form["network_type"] == train_fields.network_type_label("locon") and form["conv_dim"] == 8
    assert form["trigger"] == "sks_dog" and "Estimate" in out[-1]
    stored = version_settings.get(version, "train")
    assert stored["preset"] == "style" and stored["vram"] == 24 and stored["base_model"] == str(ctx.host.model)


def test_edits_are_saved_and_shown_again_after_a_reload(tmp_path):
    ctx, version = prepared(tmp_path)
    base, preset, vram, values = refreshed_form(ctx)
    set_field(values, "max_train_epochs", 3)
    set_field(values, "seed", 99)
    estimate = train_panel.on_change(ctx, "dog", "v1", base, preset, vram, *values)
    assert "9 steps" in estimate
    _, _, _, again = refreshed_form(ctx)
    form = train_fields.form_to_dict(again)
    assert form["max_train_epochs"] == 3 and form["seed"] == 99


def test_network_types_become_the_config_keys():
    base = train_fields.form_from_values({"network_dim": 8, "network_alpha": 4})
    lora = train_fields.overrides_from_form({**base, "network_type": "lora", "conv_dim": 4})
    assert lora["network_module"] == "networks.lora" and lora["conv_dim"] == 0 and lora["network_args"] == []
    locon = train_fields.overrides_from_form({**base, "network_type": "locon", "conv_dim": 0})
    assert locon["conv_dim"] == 4 and locon["conv_alpha"] == 2.0
    loha = train_fields.overrides_from_form({**base, "network_type": "loha"})
    assert loha["network_module"] == "lycoris.kohya" and loha["network_args"] == ["algo=loha"]
    off = train_fields.overrides_from_form({**base, "noise_offset": 0, "min_snr_gamma": None, "resolution": 768})
    assert off["noise_offset"] == 0.0 and off["min_snr_gamma"] == 0.0 and off["resolution"] == "768,768"
    form = train_fields.form_from_values({"network_module": "lycoris.kohya", "network_args": ["algo=lokr"]})
    assert form["network_type"] == "lokr"


def test_problems_are_shown_beside_their_fields_and_nothing_is_queued(tmp_path):
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    base, preset, vram, values = refreshed_form(ctx)
    set_field(values, "resolution", 100)
    set_field(values, "optimizer_type", "AdamW8bit")  # chosen by hand: this machine has no NVIDIA GPU
    out = train_panel.on_train(ctx, "dog", "v1", "gone.safetensors", preset, vram, *values)
    errors = errors_of(out)
    assert "Fix these fields first: Base model, Resolution (px), Optimizer." in out[0]
    assert "Choose a base model" in errors["pretrained_model_name_or_path"]
    assert "multiples of 64" in errors["resolution"] and "train_tools_msg_error" in errors["resolution"]
    assert "AdamW8bit" in errors["optimizer_type"]
    assert errors["network_dim"] == "" and recorder.submitted == [] and not version.config_path.exists()


def test_an_empty_dataset_is_refused(tmp_path):
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder, pictures_too=False)
    base, preset, _, values = refreshed_form(ctx)
    out = train_panel.on_train(ctx, "dog", "v1", base, preset, VRAM.label(24), *values)
    assert "dataset is empty" in errors_of(out)["dataset"] and recorder.submitted == []


def test_train_writes_the_config_and_queues_the_version(tmp_path):
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    base, preset, _, values = refreshed_form(ctx)
    values = list(train_panel.on_preset(ctx, "dog", "v1", base, preset, VRAM.label(24), *values)[:-1])
    for key, new in (("max_train_epochs", 2), ("network_dim", 4), ("network_alpha", 2), ("resolution", 64),
                     ("train_batch_size", 1), ("min_bucket_reso", 64), ("max_bucket_reso", 128),
                     ("trigger", "sks_dog"), ("auto_preview", False)):
        set_field(values, key, new)
    out = train_panel.on_train(ctx, "dog", "v1", base, preset, VRAM.label(24), *values)
    assert "Training starts now" in out[0] and all(e == "" for e in out[1:-1]), out
    assert out[-1] == compat.unchanged()  # "Advanced" stays as the person left it
    assert recorder.submitted == [("dog", "v1")]
    cfg, _ = load_config(version.config_path)
    assert cfg.max_train_epochs == 2 and cfg.network_dim == 4 and cfg.resolution_wh == (64, 64)
    assert cfg.optimizer_type == "AdamW" and cfg.pretrained_model_name_or_path == str(ctx.host.model)
    assert cfg.output_name == version.output_name and cfg.events_file == str(version.events_path)
    assert cfg.keep_tokens == 1 and cfg.clip_skip == 2
    # the trigger word typed in the form became every caption's first tag, and the sample prompt
    assert all(p.read_text(encoding="utf-8").startswith("sks_dog") for p in version.train_dir.rglob("*.txt"))
    assert (version.samples_dir / "prompts.txt").read_text(encoding="utf-8").startswith("sks_dog")
    assert version_settings.get(version, "auto_preview") is False
    assert version_settings.trigger_word(version) == "sks_dog"


def test_a_busy_version_is_not_queued_twice(tmp_path):
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    version.update(status="running")
    base, preset, vram, values = refreshed_form(ctx)
    out = train_panel.on_train(ctx, "dog", "v1", base, preset, vram, *values)
    assert "already training" in out[0] and recorder.submitted == []


def test_without_a_gpu_the_form_has_no_8bit_optimizer_and_no_mixed_precision_and_train_starts(tmp_path, monkeypatch):
    """On a CPU the 8 GB tier used to fill in AdamW8bit (and fp16), so Train answered "Fix the marked fields" with
    the reason hidden in the collapsed Advanced section."""
    monkeypatch.setattr(train_panel, "cuda_available", lambda: False)
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    base, preset, vram, values = refreshed_form(ctx)
    form = train_fields.form_to_dict(values)
    assert form["optimizer_type"] == "AdamW"
    assert form["mixed_precision"] == train_fields.choice_label("mixed_precision", "no")
    out = train_panel.on_train(ctx, "dog", "v1", base, preset, vram, *values)
    assert recorder.submitted == [("dog", "v1")], out[0]
    cfg, _ = load_config(version.config_path)
    assert cfg.optimizer_type == "AdamW" and cfg.mixed_precision == "no"


def test_the_bucket_limits_follow_the_resolution(tmp_path):
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    base, preset, vram, values = refreshed_form(ctx)
    assert train_fields.form_to_dict(values)["min_bucket_reso"] is None  # empty: follows the resolution
    set_field(values, "resolution", 128)
    out = train_panel.on_train(ctx, "dog", "v1", base, preset, vram, *values)
    assert recorder.submitted == [("dog", "v1")], out[0]
    cfg, _ = load_config(version.config_path)
    assert (cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso) == ("128,128", 64, 256)


def test_a_problem_is_shown_beside_its_field_by_its_label_and_opens_advanced(tmp_path):
    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    base, preset, vram, values = refreshed_form(ctx)
    set_field(values, "resolution", 128)
    set_field(values, "min_bucket_reso", 256)
    out = train_panel.on_train(ctx, "dog", "v1", base, preset, vram, *values)
    assert recorder.submitted == []
    label = train_fields.BY_KEY["min_bucket_reso"].label()
    assert label in out[0] and "min_bucket_reso" not in out[0]  # the summary names the field by its label
    errors = errors_of(out)
    assert "256" in errors["min_bucket_reso"] and "128" in errors["min_bucket_reso"]
    assert all(not text for key, text in errors.items() if key != "min_bucket_reso")
    assert out[-1] == compat.update(open=True)  # "Advanced", which holds the field, opens


def test_a_validation_message_names_fields_by_their_labels():
    from lib_trainer import presets

    problems = presets.validation_problems("network_dim must be at least 1; clip_skip must be 1 or more; odd thing")
    assert [p.field for p in problems] == ["network_dim", "clip_skip", "config"]
    text = train_panel.in_words(problems[1].message)
    assert "clip_skip" not in text and train_fields.BY_KEY["clip_skip"].label() in text



def test_train_over_an_earlier_runs_checkpoints_asks_before_they_go_to_the_trash(tmp_path):
    """The next Train moved a stopped run's checkpoint to the trash without a word: now it asks first."""
    from tests.ui_support import fake_checkpoint

    recorder = QueueRecorder()
    ctx, version = prepared(tmp_path, runner=recorder)
    fake_checkpoint(version.checkpoints_dir / f"{version.output_name}-000001.safetensors", 1, 6)
    version.update(status="cancelled", resumable=True)
    base, preset, vram, values = refreshed_form(ctx)
    set_field(values, "min_bucket_reso", 64)
    first = train_panel.on_train(ctx, "dog", "v1", base, preset, VRAM.label(24), *values)
    assert recorder.submitted == [] and "1 checkpoint(s) and a saved state" in first[0], first[0]
    assert "Resume continues that run" in first[0] and "Press Train again to start over" in first[0]
    assert len(version.checkpoints()) == 1  # nothing moved yet
    second = train_panel.on_train(ctx, "dog", "v1", base, preset, VRAM.label(24), *values)
    assert recorder.submitted == [("dog", "v1")] and "Training starts now" in second[0]
    # another version's question, or a new checkpoint since, asks again
    ctx.restart_asked[version.key] = (5, 0.0)
    assert "Press Train again" in train_panel.restart_question(ctx, version)
