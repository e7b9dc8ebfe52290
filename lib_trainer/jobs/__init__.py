"""Training jobs: the queue and its worker (runner), following one trainer process (supervisor), the process
itself (process), the persistent queue file (store), the trainer's event stream (events) and the workspace's
cross-process lock (lock)."""
