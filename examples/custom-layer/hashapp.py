"""A small real program for the custom-layer example: hashes a buffer in chunks on worker threads.

It reads its settings from an environment file (the one the example's `env_file` role writes):
CHUNK_KB (bytes per hashlib call) and THREADS (hashlib releases the GIL on large chunks, so
threads run in parallel). Prints one JSON line: {"throughput_mb_s": ..., "chunk_kb": ..., "threads": ...}.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def settings(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if "=" in line and not line.lstrip().startswith("#"):
                    name, _, value = line.strip().partition("=")
                    out[name] = shlex.split(value)[0] if value else ""
    except FileNotFoundError:
        pass
    return out


def main() -> None:
    env = settings(sys.argv[1])
    chunk = int(env.get("CHUNK_KB", "1")) * 1024
    threads = int(env.get("THREADS", "1"))
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 64 * 1024 * 1024
    data = b"\x5a" * total
    pieces = [memoryview(data)[i : i + chunk] for i in range(0, total, chunk)]
    share = [pieces[k::threads] for k in range(threads)]

    def work(part: list[memoryview]) -> int:
        h = hashlib.sha256()
        for p in part:
            h.update(p)
        return len(part)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(work, share))
    elapsed = time.perf_counter() - start
    assert done == len(pieces)
    print(json.dumps({"throughput_mb_s": total / 1e6 / elapsed, "chunk_kb": chunk // 1024, "threads": threads}))


if __name__ == "__main__":
    main()
