"""The job runner (lib_trainer/jobs/) with the real trainer on the tiny SD1 model, and a misbehaving fake one."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import psutil
import pytest

from lib_trainer.jobs.events import EventTail, parse_event_line
from filelock import Timeout

from lib_trainer.jobs.lock import try_acquire, workspace_lock
from lib_trainer.jobs.runner import JobRunner, RunnerSettings
from lib_trainer.jobs.store import JobError
from lib_trainer.projects import Busy, Workspace
from tests.jobs_support import RecordingHost, fake_python, make_version, pid_alive, single_thread_env, wait_for
from tests.trainer_fixtures import tiny_sd1  # noqa: F401  (fixture)

TIMEOUT = 120
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ws(tmp_path, monkeypatch):
    single_thread_env(monkeypatch)
    return Workspace(tmp_path / "ws")


@pytest.fixture
def runners(ws):
    """Makes runners on the workspace; at the end stops them and kills any trainer a test left behind."""
    made = []

    def make(host, after_train=None, **settings):
        settings.setdefault("poll_s", 0.1)
        settings.setdefault("stop_timeout_s", 60)
        runner = JobRunner(ws, host, RunnerSettings(**settings), after_train=after_train)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.shutdown(stop_running=True, timeout=90)
    for job in JobRunner(ws, RecordingHost()).jobs():
        if job.pid and pid_alive(job.pid):
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except OSError:
                os.kill(job.pid, signal.SIGKILL)


def record(runner, kinds=("job", "step", "checkpoint", "done", "error")):
    seen = []
    runner.subscribe(lambda job, event: seen.append((job.version, event)) if event["event"] in kinds else None)
    return seen


def test_queue_order_positions_config_errors_gpu_and_after_train(tiny_sd1, ws, runners):
    """Three submits run in order, one at a time; the two with broken configs fail with the trainer's own
    messages (printed before it knew its events file), and only the finished one is previewed."""
    host = RecordingHost()
    make_version(ws, tiny_sd1, version="a", settings={"auto_preview": True}, max_train_steps=2, save_every_n_steps=1)
    b = make_version(ws, tiny_sd1, version="b", settings={"auto_preview": True})
    b.config_path.write_text(b.config_path.read_text(encoding="utf-8") + "network_dimension = 8\n", encoding="utf-8")
    c = make_version(ws, tiny_sd1, version="c", settings={"auto_preview": True})
    c.config_path.write_text("network_dim = = 4\n", encoding="utf-8")
    previewed = []
    runner = runners(host, after_train=lambda v: previewed.append(v.name))
    seen = record(runner)

    assert runner.submit("dog", "a").position == 1
    runner.start()
    wait_for(lambda: runner.status("dog", "a")["status"] == "running", TIMEOUT, "a running")
    job_b, job_c = runner.submit("dog", "b"), runner.submit("dog", "c")
    assert (job_b.position, job_c.position) == (1, 2)
    status_c = runner.status("dog", "c")
    assert status_c["status"] == "queued" and status_c["position"] == 2 and status_c["job"]["id"] == job_c.id
    with pytest.raises(Busy):
        runner.submit("dog", "b")
    assert [j.version for j in runner.jobs()] == ["a", "b", "c"]

    final_c = runner.wait("dog", "c", timeout=TIMEOUT)
    started = [v for v, e in seen if e["event"] == "job" and e["status"] == "running"]
    assert started == ["a", "b", "c"]
    assert [j.status for j in runner.jobs()] == ["done", "failed", "failed"]

    final_a = runner.status("dog", "a")
    assert final_a["status"] == "finished" and final_a["exit_code"] == 0 and final_a["error"] is None
    assert final_a["step"] == 2 == final_a["total_steps"] and final_a["pid"] is None
    paths = [Path(c["path"]) for c in final_a["checkpoints"]]
    assert [p.name for p in paths] == [f"{final_a['output_name']}-step00000001.safetensors",
                                       f"{final_a['output_name']}.safetensors"]
    assert all(p.is_file() for p in paths)
    assert final_a["events"][-1]["event"] == "done" and not final_a["resumable"]
    assert [e["step"] for v, e in seen if v == "a" and e["event"] == "step"] == [1, 2]

    final_b = runner.status("dog", "b")  # a config error: the trainer's own words, its exit code 2
    assert final_b["status"] == "failed" and final_b["exit_code"] == 2
    assert "unknown config key(s): network_dimension" in final_b["error"]["message"]
    assert final_c["status"] == "failed" and "is not valid TOML" in final_c["error"]["message"]
    assert final_c["error"]["log_tail"]

    assert host.calls == ["release", "restore"] * 3  # once each per job, never two releases in a row
    assert previewed == ["a"]  # after finished jobs only


def test_stop_mid_run_keeps_checkpoints_and_dequeues_a_waiting_job(tiny_sd1, ws, runners):
    host = RecordingHost()
    make_version(ws, tiny_sd1, version="long", max_train_steps=400, save_every_n_steps=2)
    make_version(ws, tiny_sd1, version="next")
    runner = runners(host).start()
    first_checkpoint = threading.Event()
    runner.subscribe(lambda job, event: event["event"] == "checkpoint" and first_checkpoint.set())
    runner.submit("dog", "long")
    wait_for(lambda: runner.status("dog", "long")["status"] == "running", TIMEOUT, "long running")
    assert runner.submit("dog", "next").position == 1
    assert first_checkpoint.wait(TIMEOUT)

    assert runner.stop("dog", "next") == "dequeued"
    assert ws.version("dog", "next").status == "draft"
    assert [j.version for j in runner.jobs()] == ["long"]

    assert runner.stop("dog", "long") == "stopping"
    final = runner.wait("dog", "long", timeout=TIMEOUT)
    assert final["status"] == "cancelled" and final["exit_code"] == 0
    assert 2 <= final["step"] < 400
    checkpoints = [Path(c["path"]) for c in final["checkpoints"]]
    assert checkpoints[0].name.endswith("-step00000002.safetensors") and len(checkpoints) >= 2
    assert all(p.is_file() for p in checkpoints)
    assert final["resumable"] and (Path(final["resume_state"]) / "train_state.json").is_file()
    assert final["events"][-1]["event"] == "done" and final["events"][-1]["interrupted"] is True
    assert "stop requested" in ws.version("dog", "long").log_path.read_text(encoding="utf-8")
    assert host.calls == ["release", "restore"]
    assert runner.stop("dog", "long") == "idle"


def test_killed_trainer_fails_with_exit_code_and_log_tail(tiny_sd1, ws, runners):
    host = RecordingHost()
    make_version(ws, tiny_sd1, version="killed", max_train_steps=400, save_every_n_steps=2)
    runner = runners(host).start()
    checkpoint = threading.Event()
    runner.subscribe(lambda job, event: event["event"] == "checkpoint" and checkpoint.set())
    job = runner.submit("dog", "killed")
    assert checkpoint.wait(TIMEOUT)
    pid = runner.status("dog", "killed")["pid"]
    os.kill(pid, signal.SIGKILL)

    final = runner.wait("dog", "killed", timeout=TIMEOUT)
    assert final["status"] == "failed" and final["exit_code"] == -9
    assert "exit code -9" in final["error"]["message"] and "SIGKILL" in final["error"]["message"]
    assert f"Train Tools job {job.id}" in final["error"]["log_tail"]
    assert Path(final["checkpoints"][0]["path"]).is_file()
    assert host.calls == ["release", "restore"]
    with pytest.raises(psutil.NoSuchProcess):  # reaped: not even a zombie is left
        psutil.Process(pid)


def test_restarts_died_while_away_is_interrupted_resume_continues_and_a_live_trainer_is_reattached(
        tiny_sd1, ws, runners):
    """Three WebUI lives on one workspace: the first dies with the machine while training (the trainer is
    killed too); the second finds the job interrupted, resumes it from the saved state and restarts while the
    resumed trainer runs; the third reattaches to that trainer and follows it to the end."""
    v = make_version(ws, tiny_sd1, settings={"auto_preview": True}, max_train_steps=12, save_every_n_steps=2,
                     save_state=True)
    first_host = RecordingHost()
    first = runners(first_host).start()
    first.submit("dog", "v1")
    state = v.checkpoints_dir / f"{v.output_name}-step00000002-state"
    wait_for(lambda: (state / "train_state.json").is_file(), TIMEOUT, "the first saved state")
    first.shutdown()
    pid = v.state()["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 30, "the trainer to die")

    second_host = RecordingHost()
    second = runners(second_host).start()
    lost = second.wait("dog", "v1", timeout=TIMEOUT)
    assert lost["status"] == "interrupted" and lost["resumable"] and lost["exit_code"] is None
    assert lost["resume_state"].endswith("-state") and "interrupted" in lost["message"]
    assert lost["events"] and lost["events"][-1]["event"] in ("step", "checkpoint")
    assert second_host.calls == []  # nothing ran, so the GPU was never touched
    saved_step = json.loads((Path(lost["resume_state"]) / "train_state.json").read_text())["global_step"]
    assert saved_step >= 2

    stepped = threading.Event()
    second.subscribe(lambda job, event: event["event"] == "step" and stepped.set())
    job = second.resume("dog", "v1")
    assert job.resume == lost["resume_state"]
    assert stepped.wait(TIMEOUT)
    second.shutdown()  # the WebUI restarts while the resumed run trains: the trainer goes on
    pid = v.state()["pid"]
    assert pid_alive(pid) and v.status == "running"

    third_host = RecordingHost()
    previewed = []
    third = runners(third_host, after_train=lambda version: previewed.append(version.name))
    seen = record(third)
    third.start()
    final = third.wait("dog", "v1", timeout=TIMEOUT)
    assert final["status"] == "finished" and final["step"] == 12 and final["resumed_from"] == job.resume
    assert any(e["event"] == "done" for _, e in seen)  # events after the restart reach the new listeners
    steps = [c["step"] for c in final["checkpoints"]]
    assert steps == sorted(set(steps)) and steps[-1] == 12 and 2 in steps
    assert Path(final["checkpoints"][-1]["path"]).name == f"{v.output_name}.safetensors"
    events = v.read_events()  # the resumed run appends to the interrupted run's events
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    assert len(starts) == 2 and events[starts[1]]["resumed_from_step"] == saved_step
    assert [e["step"] for e in events[starts[1]:] if e["event"] == "step"] == list(range(saved_step + 1, 13))
    # each runner restores only what it released, once; a runner that shut down leaves it to the next one
    assert first_host.calls == ["release"] and second_host.calls == ["release"]
    assert third_host.calls == ["release", "restore"]
    assert previewed == ["v1"]
    assert not pid_alive(pid)


def test_garbage_output_and_a_failing_after_train_hook_confuse_nothing(tiny_sd1, ws, runners, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_MODE", "garbage")
    first = make_version(ws, tiny_sd1, version="junk1", settings={"auto_preview": True})
    make_version(ws, tiny_sd1, version="junk2", settings={"auto_preview": True})
    first.events_path.write_text('{"event": "step", "step": 99}\n', encoding="utf-8")  # an older run's events
    old_checkpoint = first.checkpoints_dir / f"{first.output_name}-000007.safetensors"  # and its checkpoint
    old_checkpoint.write_bytes(b"old")
    calls = []

    def after_train(version):
        calls.append(version.name)
        if version.name == "junk1":
            raise RuntimeError("preview exploded")

    host = RecordingHost()
    deps_dir = tmp_path / "private deps"
    runner = runners(host, after_train=after_train, python=fake_python(tmp_path), gpu="1", deps_dir=deps_dir).start()
    runner.submit("dog", "junk1")
    runner.submit("dog", "junk2")
    final = runner.wait("dog", "junk1", timeout=TIMEOUT)
    assert final["status"] == "finished" and final["error"] is None
    assert (final["step"], final["loss"], final["total_steps"]) == (2, 0.25, 3)
    assert [Path(c["path"]).name for c in final["checkpoints"]] == [f"{final['output_name']}.safetensors"]
    kinds = [e["event"] for e in final["events"]]
    assert kinds[0] == "start" and kinds[-3:] == ["step", "checkpoint", "done"] and 5 not in kinds
    assert first.events_path.with_name("events.prev.jsonl").read_text(encoding="utf-8").count("99") == 1
    # A fresh run moved the older run's checkpoint to the trash: only its own are listed, the old one restorable.
    assert not old_checkpoint.exists() and [c.name for c in first.checkpoints()] == [final["output_name"]]
    assert [e.label for e in ws.trash()] == ["previous run of dog/junk1"]
    log = first.log_path.read_text(encoding="utf-8", errors="replace")  # stdout and stderr both land there
    assert f"cwd={ROOT} CUDA_VISIBLE_DEVICES=1" in log and f"PYTHONPATH={deps_dir}{os.pathsep}{ROOT}" in log
    assert "Traceback (most recent call last): not really" in log
    assert runner.wait("dog", "junk2", timeout=TIMEOUT)["status"] == "finished"
    assert calls == ["junk1", "junk2"]
    assert "preview exploded" in first.state()["after_train_error"]["message"]
    assert host.calls == ["release", "restore"] * 2


def test_a_trainer_ignoring_the_stop_is_killed_after_the_timeout(tiny_sd1, ws, runners, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_MODE", "stubborn")
    make_version(ws, tiny_sd1)
    host = RecordingHost()
    runner = runners(host, python=fake_python(tmp_path), stop_timeout_s=1.0).start()
    runner.submit("dog", "v1")
    wait_for(lambda: (runner.status("dog", "v1").get("step") or 0) >= 2, TIMEOUT, "steps")
    runner.stop("dog", "v1")
    final = runner.wait("dog", "v1", timeout=30)
    assert final["status"] == "cancelled" and final["exit_code"] == -9
    assert "killing it" in ws.version("dog", "v1").log_path.read_text(encoding="utf-8")
    assert host.calls == ["release", "restore"]
    # the tab says what happened: ended by force, nothing to resume from
    assert "ended by force" in final["message"] and "none to resume from" in final["message"]
    assert final["resumable"] is False


def test_the_stop_grace_period_fits_the_step_time(tiny_sd1, ws, runners, tmp_path, monkeypatch):
    """At 2 s a step the trainer needs longer than stop_timeout_s to end its step and save: it is not killed."""
    monkeypatch.setenv("FAKE_TRAINER_MODE", "slowsteps")
    make_version(ws, tiny_sd1)
    runner = runners(RecordingHost(), python=fake_python(tmp_path), stop_timeout_s=1.0).start()
    runner.submit("dog", "v1")
    wait_for(lambda: (runner.status("dog", "v1").get("step") or 0) >= 2, TIMEOUT, "steps")
    runner.stop("dog", "v1")
    final = runner.wait("dog", "v1", timeout=60)
    assert final["status"] == "cancelled" and final["exit_code"] == 0, final
    assert final["resumable"] is True and final["message"].startswith("Stopped on request; the checkpoints")
    assert "within 5 s" in ws.version("dog", "v1").log_path.read_text(encoding="utf-8")  # 1 s + 2 steps of 2 s


def test_a_full_disk_is_said_as_a_full_disk_and_never_retried_in_a_loop(tiny_sd1, ws, runners, tmp_path, monkeypatch,
                                                                        caplog):
    import logging

    from lib_trainer import projects
    from lib_trainer.common import disk
    from lib_trainer.jobs import store, unsaved

    monkeypatch.setenv("FAKE_TRAINER_MODE", "diskfull")
    monkeypatch.setattr(unsaved, "RETRY_S", 0.5)
    v = make_version(ws, tiny_sd1)
    runner = runners(RecordingHost(), python=fake_python(tmp_path)).start()
    runner.submit("dog", "v1")
    wait_for(lambda: (runner.status("dog", "v1").get("step") or 0) >= 3, TIMEOUT, "steps")

    full = {"on": True}
    real_write = projects.atomic_write_json

    def write(path, data):
        if full["on"]:
            raise disk.DiskFull(Path(path).parent, 10 << 20)
        real_write(path, data)

    monkeypatch.setattr(disk, "free_bytes", lambda folder: (10 << 20) if full["on"] else (50 << 30))
    monkeypatch.setattr(projects, "atomic_write_json", write)
    monkeypatch.setattr(store, "atomic_write_json", write)
    caplog.set_level(logging.DEBUG, logger="train_tools.jobs")
    (v.checkpoints_dir / "disk_full_now").parent.mkdir(parents=True, exist_ok=True)
    (v.checkpoints_dir / "disk_full_now").touch()

    # version.json and jobs.json cannot be written, yet the runner says how it ended
    state = runner.wait("dog", "v1", timeout=60)
    assert state["status"] == "failed"
    assert state["message"].startswith("The disk is full (10 MB free at ") and "Free some space" in state["message"]
    assert "unexpected pos" not in state["message"] and "unexpected pos" in state["error"]["traceback_tail"]
    assert runner.job_for("dog", "v1").status == "failed"
    assert v.state()["status"] == "running"  # on disk it still says so: nothing could be written
    stop_message = runner.stop("dog", "v1")  # nothing to stop: it has ended
    assert stop_message == "idle"
    import time as clock

    clock.sleep(2.0)  # 20 polls of the worker
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) <= 3, [r.getMessage() for r in errors]  # said once each, not once per poll
    assert not [r for r in caplog.records if "reattaching" in r.getMessage()]

    full["on"] = False  # space freed: what was kept in memory is written
    wait_for(lambda: v.state()["status"] == "failed", 30, "version.json written")
    assert v.state()["message"] == state["message"]
    wait_for(lambda: store.JobStore(ws.root).load()[-1].status == "failed", 30, "jobs.json written")


def test_two_runners_on_one_workspace_never_train_at_once(tiny_sd1, ws, runners, tmp_path, monkeypatch):
    """The WebUI and the standalone app on the same workspace: the trainer lock lets only one trainer run."""
    monkeypatch.setenv("FAKE_TRAINER_MODE", "slow")
    make_version(ws, tiny_sd1, version="one")
    make_version(ws, tiny_sd1, version="two")
    hosts = [RecordingHost(), RecordingHost()]
    one, two = (runners(h, python=fake_python(tmp_path)) for h in hosts)
    two.start()
    one.submit("dog", "one")
    wait_for(lambda: (one.status("dog", "one").get("step") or 0) >= 1, TIMEOUT, "one training")
    one.start()
    one.submit("dog", "two")
    wait_for(lambda: (one.status("dog", "one").get("step") or 0) >= 20, TIMEOUT, "more steps")
    assert two.status("dog", "two")["status"] == "queued"  # both runners idle-poll, neither starts it

    assert one.stop("dog", "one") == "stopping"  # asked through the runner that does not follow it
    assert two.wait("dog", "one", timeout=30)["status"] == "cancelled"
    wait_for(lambda: two.status("dog", "two")["status"] == "running", 30, "two running")
    one.stop("dog", "two")
    assert one.wait("dog", "two", timeout=30)["status"] == "cancelled"
    assert sorted(hosts[0].calls + hosts[1].calls) == ["release"] * 2 + ["restore"] * 2
    assert all(h.calls in ([], ["release", "restore"], ["release", "restore"] * 2) for h in hosts)


def test_missing_config_and_a_python_that_does_not_exist(tiny_sd1, ws, runners, tmp_path):
    v = make_version(ws, tiny_sd1)
    host = RecordingHost()
    runner = runners(host, python=str(tmp_path / "no-such-python"))
    runner.submit("dog", "v1")
    v.config_path.unlink()
    runner.start()
    final = runner.wait("dog", "v1", timeout=30)
    assert final["status"] == "failed" and "config.toml" in final["error"]["message"]
    assert host.calls == []  # failed before the GPU was touched
    with pytest.raises(JobError, match="no training config"):
        runner.submit("dog", "v1")
    with pytest.raises(JobError, match="no saved training state"):
        runner.resume("dog", "v1")

    make_version(ws, tiny_sd1, version="v2")
    runner.submit("dog", "v2")
    final = runner.wait("dog", "v2", timeout=30)
    assert final["status"] == "failed" and "Cannot start the trainer" in final["error"]["message"]
    assert host.calls == ["release", "restore"]


def test_event_tail_waits_for_complete_lines_and_skips_garbage(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []
    with open(path, "wb") as fh:
        fh.write(b'noise\n{"event": "start", "total_steps": 3}\n{"event": "st')
        fh.flush()
        assert [e["event"] for e in tail.read()] == ["start"]
        fh.write(b'ep", "step": 1}\n\xff\xfe{"event": "x"}\n{"event": 1}\n[]\n{"event": "done"}')
        fh.flush()
        assert [e["event"] for e in tail.read()] == ["step"]
    assert [e["event"] for e in tail.read(final=True)] == ["done"]
    path.write_bytes(b'{"event": "start"}\n')  # replaced by a shorter file: read from its beginning
    assert [e["event"] for e in tail.read()] == ["start"]
    assert parse_event_line(b'{"event": "step"} trailing') is None


def test_file_lock_excludes_a_second_holder(tmp_path):
    first, second = workspace_lock(tmp_path / "x.lock"), workspace_lock(tmp_path / "x.lock")
    assert try_acquire(first)
    assert not try_acquire(second)
    with pytest.raises(Timeout):
        second.acquire(timeout=0.2)
    first.release()
    assert try_acquire(second)
    second.release()
