"""Stand-in torchvision for benchmarking sd-scripts without a matching torchvision (see ../README.md)."""
__version__ = "0.0.0+train-tools-bench-shim"

from . import transforms  # noqa: E402,F401
