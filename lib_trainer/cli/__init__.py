"""``python -m lib_trainer.cli``: Train Tools headless — the same core as the tab, without a WebUI.

    python -m lib_trainer.cli new 可爱的狗                     # project + version v1
    python -m lib_trainer.cli import 可爱的狗 ~/pictures/dog    # files, folders, .zip → dataset (+ preprocessing)
    python -m lib_trainer.cli caption 可爱的狗 --trigger sks_dog --remove "blue eyes"
    python -m lib_trainer.cli train 可爱的狗 --base model.safetensors --preset person   # or: --base embedded
    python -m lib_trainer.cli preview 可爱的狗 && python -m lib_trainer.cli pick 可爱的狗 --lora-dir models/Lora
    python -m lib_trainer.cli status 可爱的狗 · list

A version is named ``PROJECT/VERSION`` (``PROJECT`` alone: its newest version). Every command takes
``--workspace DIR`` (default ``$TRAIN_TOOLS_WORKSPACE`` or ``./outputs/train_tools``) and ``--json`` (one JSON
document on stdout; commands with progress print JSON lines first, the result last). Exit codes: 0 done, 1 failed,
2 usage error, 130 stopped with Ctrl-C.

The host is the standalone one (``lib_trainer.hosts.standalone``): no tagger, txt2img on diffusers. Training runs
through ``lib_trainer.jobs.runner.JobRunner`` in a background ``worker`` process (the trainer outlives a closed terminal;
``train --detach`` returns at once and ``status --follow`` shows the run again). Heavy modules are imported inside
the commands, so ``--help`` stays instant.

The package: ``entry`` (main), ``parser`` (build_parser), ``errors`` (exit codes, CliError), ``output`` (text/JSON,
progress lines), ``hints`` (the commands printed as next steps: quoted for the shell, with the --workspace/--lang
given), ``common`` (workspace, version targets, model folders, settings, host), ``arg_values`` (option value
parsers), one module per command group (``projects_cmds``, ``dataset_cmds``, ``train_cmds``, ``preview_cmds``)
and what ``train`` uses (``train_config``, ``job_follow``).
"""
