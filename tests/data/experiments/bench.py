"""A benchmark for tests: its behaviour is chosen by its arguments.

    bench.py MODE X [SLEEP]

MODE ok prints {"score": 100 - (X - 7)**2}; crash exits 3 after printing "boom" on stderr;
garbage prints text with no metrics; SLEEP seconds are slept first.
"""

import json
import sys
import time

mode, x = sys.argv[1], float(sys.argv[2])
if len(sys.argv) > 3:
    time.sleep(float(sys.argv[3]))
if mode == "crash":
    print("boom: the benchmark crashed", file=sys.stderr)
    sys.exit(3)
if mode == "garbage":
    print("hello, this is not a metric")
    sys.exit(0)
print(json.dumps({"score": 100 - (x - 7) ** 2, "x": x}))
