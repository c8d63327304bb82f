"""``python -m agents.llm_serve <llama_cpp.server flags>``: llama-cpp-python's OpenAI-compatible server
with a parent-death watchdog.

run.py starts the model server in its own session (so a Ctrl-C in the terminal reaches run.py only).
If run.py itself is killed (SIGKILL, OOM killer), nothing would stop the server; this wrapper exits
as soon as its parent is gone, so no orphaned model server keeps a port and the CPUs busy.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

ORPHANED = 3


def watch_parent(parent: int, interval_s: float = 1.0) -> None:
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent:
            os._exit(ORPHANED)


def main() -> None:
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True, name="parent-watchdog").start()
    sys.argv = ["llama_cpp.server", *sys.argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
