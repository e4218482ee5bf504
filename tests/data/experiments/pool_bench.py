"""A benchmark for the pool tests: records when it ran on which host, then scores.

    pool_bench.py HOST LOG MODE X SLEEP

Appends "start HOST PID TIME" and "end HOST PID TIME" lines to LOG (under a lock), sleeping SLEEP
seconds in between; MODE crash exits 3 after the sleep. Prints {"score": 100 - (X - 7) ** 2}.
"""

import fcntl
import json
import os
import sys
import time

host, log, mode, x, sleep = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])


def mark(what: str) -> None:
    with open(log, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f"{what} {host} {os.getpid()} {time.time():.6f}\n")


mark("start")
time.sleep(sleep)
mark("end")
if mode == "crash":
    print("boom: the benchmark crashed", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"score": 100 - (x - 7) ** 2}))
