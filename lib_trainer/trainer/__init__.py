"""The trainer program: ``python -m lib_trainer.trainer CONFIG.toml``.

It runs in its own process with the trainer's private dependencies on its path and imports nothing from the
rest of ``lib_trainer`` except the modules inside this package.
"""
