"""This process's own peak resident memory (standard library only: cheap to import in a child
process that measures itself)."""

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
