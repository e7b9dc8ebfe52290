"""How a trainer is asked to stop: SIGINT/SIGTERM (and CTRL_BREAK on Windows, which is how the job runner stops a
trainer there) set a flag that the loop reads after each step; it then writes a checkpoint and its state and exits
cleanly. A second signal stops at once."""
from __future__ import annotations

import signal


class StopSignal:
    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        signals = [signal.SIGINT, signal.SIGTERM]
        if hasattr(signal, "SIGBREAK"):
            signals.append(signal.SIGBREAK)
        for sig in signals:
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests calling run() from a thread)
                pass
