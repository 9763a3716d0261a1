"""Write events.ndjson and outcomes.ndjson for the README walkthrough.

Run: python docs/examples/make_traffic.py [N] [--out DIR]   (default 200 refunds into
/tmp/walkthrough, created if missing; nothing is written to the current directory)
The humans follow the same rule as docs/examples/refund_agent.py, except for about 2% of
cases where they make an exception, so agreement is high but not perfect.
"""

import argparse
import json
import random
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("n", nargs="?", type=int, default=200, help="refunds to write (200)")
parser.add_argument("--out", default="/tmp/walkthrough", help="directory (/tmp/walkthrough)")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(1)
with (out / "events.ndjson").open("w") as events, (out / "outcomes.ndjson").open("w") as outcomes:
    for i in range(args.n):
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
print(f"wrote {args.n} events to {out / 'events.ndjson'} and {args.n} outcomes to "
      f"{out / 'outcomes.ndjson'}")
