"""A stand-in for the TechEmpower Quarkus benchmark of the Kruize demo: reads nothing, prints the
three metrics the search space's objective_function uses, as one JSON line."""

import json
import random

print(
    json.dumps(
        {
            "THROUGHPUT_RATE_3m": round(random.uniform(900.0, 1100.0), 3),
            "RESPONSE_TIME_RATE_3m": round(random.uniform(4.0, 6.0), 3),
            "MAX_RESPONSE_TIME": round(random.uniform(80.0, 120.0), 3),
        }
    )
)
