"""Train, Stop and Resume through the tab's callbacks with the real job runner (and a fake trainer that steps every
50 ms until it is stopped), watched through the tab's own poll."""
from lib_trainer.jobs.runner import JobRunner, RunnerSettings
from lib_trainer.ui import dataset_panel, tab, train_fields, train_panel
from tests.jobs_support import fake_python, single_thread_env, wait_for
from tests.ui_support import make_context, pictures


def test_train_stop_resume_and_the_poll_shows_each_state(tmp_path, monkeypatch):
    single_thread_env(monkeypatch)
    monkeypatch.setenv("FAKE_TRAINER_MODE", "slow")
    ctx = make_context(tmp_path)
    runner = JobRunner(ctx.workspace, ctx.host, RunnerSettings(python=fake_python(tmp_path), poll_s=0.1,
                                                                stop_timeout_s=20))
    ctx.runner = runner.start()
    try:
        ctx.workspace.create_project("dog")
        version = ctx.version("dog", "v1")
        dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 2)], "")
        dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 1)
        out = train_panel.on_refresh(ctx, "dog", "v1")
        base, preset = out[0]["value"], out[1]
        values = list(train_panel.on_preset(ctx, "dog", "v1", base, preset, train_panel.VRAM_CHOICES.label(24),
                                            *out[3:3 + len(train_fields.KEYS)])[:-1])
        message = train_panel.on_train(ctx, "dog", "v1", base, preset, train_panel.VRAM_CHOICES.label(24), *values)[0]
        assert "Training starts now" in message or "Queued" in message

        def poll(seen):
            return tab.poll(ctx, "dog", "v1", seen, None, None)

        wait_for(lambda: (version.state().get("step") or 0) >= 3, 30, "training steps")
        first = poll({})
        assert "Training" in first[0] and "step" in first[0] and first[6]["interactive"] is True  # Stop
        assert first[2] is not None  # the loss chart
        assert "Stopping" in train_panel.on_stop(ctx, "dog", "v1")
        wait_for(lambda: version.status == "cancelled", 30, "the stop")
        stopped = poll(first[-1])
        assert "Stopped" in stopped[0] and "can be resumed" in stopped[0]
        assert stopped[5]["interactive"] is True and stopped[7]["interactive"] is True  # Train, Resume
        assert "-step" in stopped[8 + 1]  # the stop's checkpoint is listed
        assert "Resuming" in train_panel.on_resume(ctx, "dog", "v1")
        wait_for(lambda: version.status == "running" and (version.state().get("step") or 0) >= 2, 30, "resume")
        assert "Training" in poll(stopped[-1])[0]
        train_panel.on_stop(ctx, "dog", "v1")
        wait_for(lambda: version.status == "cancelled", 30, "the second stop")
        assert "Nothing to stop" in train_panel.on_stop(ctx, "dog", "v1")
    finally:
        runner.shutdown(stop_running=True, timeout=30)
