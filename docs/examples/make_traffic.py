"""Write events.ndjson and outcomes.ndjson for the README walkthrough.

Run: python docs/examples/make_traffic.py [N]   (default 200 refunds)
The humans follow the same rule as docs/examples/refund_agent.py, except for about 2% of
cases where they make an exception, so agreement is high but not perfect.
"""

import json
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
rng = random.Random(1)
with open("events.ndjson", "w") as events, open("outcomes.ndjson", "w") as outcomes:
    for i in range(n):
        amount = round(rng.uniform(5, 150), 2)
        days = rng.randint(0, 45)
        event = {"event_id": f"r-{i}", "task_type": "refund_request",
                 "payload": {"amount": amount, "days_since_purchase": days,
                             "customer": {"email": f"c{i}@example.com"}}}
        ok = amount < 100 and days <= 30
        if rng.random() < 0.02:
            ok = not ok
        decision = {"action": "approve" if ok else "deny", "amount": amount if ok else 0,
                    "reason": "Within policy" if ok else "Outside refund policy"}
        outcome = {"event_id": f"r-{i}", "decision": decision, "decided_by": "ops/jane"}
        events.write(json.dumps(event) + "\n")
        outcomes.write(json.dumps(outcome) + "\n")
print(f"wrote {n} events to events.ndjson and {n} outcomes to outcomes.ndjson")
