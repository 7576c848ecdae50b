"""This process's own peak resident memory, and a task run in a fresh interpreter so that its peak
is its own (standard library only: cheap to import in a child process that measures itself)."""

from __future__ import annotations


def peak_rss_mb() -> float:
    """Peak RSS in MB: VmHWM from /proc/self/status (ru_maxrss would report a forking parent's
    peak across exec); ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(target, *args):
    """``target(*args, queue)`` in a new interpreter (spawn); returns what it put on ``queue``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result
