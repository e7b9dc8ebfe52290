"""``python -m lib_trainer.trainer CONFIG.toml`` (also under ``accelerate launch`` for several GPUs)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from lib_trainer.common.deps_dir import add_deps_to_path
from lib_trainer.common.i18n import set_language

LANGUAGE_ENV = "TRAIN_TOOLS_LANG"  # zh_CN, …; unset or empty: English


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.trainer", description="Train a LoRA from a TOML config.")
    parser.add_argument("config", help="TOML config with sd-scripts' key names")
    args = parser.parse_args(argv)

    # Started by hand rather than by the job runner (which puts it on PYTHONPATH): the private dependencies
    # (diffusers, lycoris, …) are importable all the same.
    add_deps_to_path()
    # the language of the events' messages: the job runner passes the tab's (lib_trainer/jobs/process.py)
    set_language(os.environ.get(LANGUAGE_ENV) or None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from .events import EventWriter
    from .schema import ConfigError, load_config

    try:
        cfg, config_warnings = load_config(args.config)
    except ConfigError as exc:
        # no output_dir is known yet: the error goes to stdout only
        EventWriter(None).emit("error", message=str(exc), traceback_tail="")
        return 2
    events = EventWriter(cfg.effective_events_file if cfg.output_dir else None)
    for message in config_warnings:
        events.emit("warning", message=message)

    from .stop_signal import StopSignal
    from .train import run

    stop = StopSignal()
    stop.install()
    try:
        return run(cfg, events, stop)
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
