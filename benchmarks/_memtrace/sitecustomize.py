"""
A memory report from each benchmark node, for ``benchmarks/run.py --memtrace DIR``.

run.py puts this folder on the nodes' PYTHONPATH and names DIR in
C{P2PEXEC_MEMTRACE}; Python imports this file at start (as C{sitecustomize}),
so no p2pexec code changes.  In each twistd process it writes to DIR, as
C{<name>-r<replicas>-<pid>}:

  - C{.memlog}: a line each time VmRSS grows by 0.25 MiB (polled every 10 ms
    by a thread): seconds since start, VmHWM, VmRSS, RssAnon, RssFile (MiB),
    SQLite's memory (C{sqlite3_memory_used}, C{_highwater}) once it is
    loaded, and glibc's heap (C{mallinfo2}); at exit the same, and a census
    of the objects the garbage collector tracks, by type;
  - with C{P2PEXEC_MEMTRACE_FRAMES} set (frames per traceback, e.g. 1):
    tracemalloc snapshots, C{-peak.snap} (taken each time traced memory
    grows by 1 MiB) and C{-end.snap} (at exit), to compare with
    C{tracemalloc.Snapshot.load(...).compare_to(...)}.  Tracing makes a node
    about ten times slower and doubles its memory: use it to find where
    memory goes, not to measure it.

Any other process (the CLI, a competitor) is left alone.
"""

import os
import sys

_OUT = os.environ.get("P2PEXEC_MEMTRACE") if os.path.basename(sys.argv[0] if sys.argv else "") == "twistd" else None


def _start(out: str) -> None:
    import atexit
    import collections
    import ctypes
    import gc
    import threading
    import time
    import tracemalloc

    frames = int(os.environ.get("P2PEXEC_MEMTRACE_FRAMES") or 0)
    if frames > 0:
        tracemalloc.start(frames)

    def option(flag: str, default: str) -> str:
        return next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == flag), default)

    base = os.path.join(out, f"{option('--name', 'node')}-r{option('--replicas', 'default')}-{os.getpid()}")
    started = time.monotonic()

    def status() -> str:
        found = {}
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    found[key] = int(value.split()[0]) / 1024
        return " ".join(f"{key} {value:.2f}" for key, value in found.items())

    def native() -> str:
        text = ""
        if "_sqlite3" in sys.modules:
            try:
                lib = ctypes.CDLL("libsqlite3.so.0")
                lib.sqlite3_memory_used.restype = lib.sqlite3_memory_highwater.restype = ctypes.c_int64
                text += f" sqlite {lib.sqlite3_memory_used() / 2**20:.2f} (high {lib.sqlite3_memory_highwater(0) / 2**20:.2f})"
            except (OSError, AttributeError):
                pass
        try:

            class Info(ctypes.Structure):
                _fields_ = [
                    (n, ctypes.c_size_t)
                    for n in (
                        "arena",
                        "ordblks",
                        "smblks",
                        "hblks",
                        "hblkhd",
                        "usmblks",
                        "fsmblks",
                        "uordblks",
                        "fordblks",
                        "keepcost",
                    )
                ]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = Info
            m = libc.mallinfo2()
            text += f" malloc heap {m.arena / 2**20:.2f} used {m.uordblks / 2**20:.2f} free {m.fordblks / 2**20:.2f} mmap {m.hblkhd / 2**20:.2f}"
        except (OSError, AttributeError):
            pass
        return text

    log = open(base + ".memlog", "w", encoding="utf-8")  # noqa: SIM115 (open for the life of the process)
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            log.write(line + "\n")
            log.flush()

    def poll() -> None:
        highest = 0.0
        traced = 0
        while True:
            time.sleep(0.01)
            with open("/proc/self/status", encoding="ascii") as f:
                rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
            if rss < highest + 0.25:
                continue
            highest = rss
            line = f"{time.monotonic() - started:.3f} {status()}{native()}"
            if tracemalloc.is_tracing():
                current, peak = tracemalloc.get_traced_memory()
                line += f" traced {current / 2**20:.2f} (peak {peak / 2**20:.2f})"
                if current > traced + 2**20:
                    traced = current
                    tracemalloc.take_snapshot().dump(base + "-peak.snap")
            write(line)

    threading.Thread(target=poll, name="memtrace", daemon=True).start()

    def end() -> None:
        write(f"end {time.monotonic() - started:.3f} {status()}{native()}")
        census = collections.Counter(type(o).__name__ for o in gc.get_objects())
        write("census " + ", ".join(f"{name} {count}" for name, count in census.most_common(30)))
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(base + "-end.snap")

    atexit.register(end)


if _OUT:
    _start(_OUT)
