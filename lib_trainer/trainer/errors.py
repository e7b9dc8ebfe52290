"""The trainer's own failure: a message meant for the person running the training (no traceback shown)."""


class TrainingError(RuntimeError):
    """A failure with a message meant for the person running the training."""
