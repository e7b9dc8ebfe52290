"""What every layer shares, the trainer included: atomic writes and file hashes (files), the safetensors header
(safetensors_header), names people give things (names), translation (i18n), objects that live once per process
(runtime), whether an NVIDIA GPU is here (cuda) and traceback tails (tracebacks).

Standard library only, and nothing here imports anything else of lib_trainer but this package: it is the leaf
that the trainer subprocess, the WebUI process and the standalone app all import.
"""
