#!/usr/bin/env python3
"""Generate a realistic Omnistrate usage export tree (the layout of the export bucket).

One JSON file per subscription per hour under
  OUT/omnistrate-metering/SERVICE/ENV/PLAN/YYYY/MM/DD/HH/SUBSCRIPTION.json
each holding records for the four dimensions for one to three pods, plus the completion
marker OUT/omnistrate-metering/last_success_export.json. Deterministic for a given --seed.

  scripts/gen-export.py --out /tmp/export --subscriptions 100 --month 2025-06
"""
import argparse
import calendar
import json
import os
import random
import uuid
from datetime import datetime, timedelta, timezone

GIB = 1024 ** 3
INSTANCE_TYPES = [("t4g.small", 2, 2), ("m6g.large", 2, 8), ("r6g.xlarge", 4, 32), ("c6g.2xlarge", 8, 16)]
PRICES = {"cpu_core_hours": 0.04, "memory_byte_hours": 0.000000000005, "storage_allocated_byte_hours": 0.0000000001,
          "replica_hours": 0.01}


def subscriptions(rng, n, plan):
    subs = []
    for i in range(n):
        itype, cores, mem_gib = rng.choice(INSTANCE_TYPES)
        subs.append({
            "subscriptionId": f"sub-{uuid.UUID(int=rng.getrandbits(128)).hex[:10]}",
            "externalPayerId": str(uuid.UUID(int=rng.getrandbits(128))),
            "customerId": f"user-{uuid.UUID(int=rng.getrandbits(128)).hex[:10]}",
            "customerEmail": f"customer{i}@example.com",
            "instanceId": f"instance-{uuid.UUID(int=rng.getrandbits(128)).hex[:9]}",
            "hostClusterId": f"hc-{uuid.UUID(int=rng.getrandbits(128)).hex[:9]}",
            "instanceType": itype,
            "cores": cores,
            "memory": mem_gib * GIB,
            "storage": rng.choice([10, 20, 50, 100, 500]) * GIB,
            "pods": rng.randint(1, 3),
            "priced": rng.random() < 0.7,
        })
    return subs


def records(rng, sub, hour, args):
    out = []
    for pod in range(sub["pods"]):
        ts = hour + timedelta(hours=1, minutes=rng.randint(0, 4), seconds=rng.randint(0, 59))
        base = {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "organizationId": "org-ng3178atx4",
            "organizationName": "Example Vendor",
            "customerId": sub["customerId"],
            "customerEmail": sub["customerEmail"],
            "subscriptionId": sub["subscriptionId"],
            "externalPayerId": sub["externalPayerId"],
            "serviceId": "s-P6UJ5XUunY",
            "serviceName": args.service,
            "serviceEnvironmentId": "se-6dkTBqXrUu",
            "serviceEnvironmentType": args.environment,
            "productTierId": args.plan,
            "productTierName": args.service,
            "hostClusterId": sub["hostClusterId"],
            "instanceId": sub["instanceId"],
            "podName": f"{args.service}-{pod}",
            "instanceType": sub["instanceType"],
            "hostName": f"ip-172-0-{rng.randint(0, 255)}-{rng.randint(0, 255)}.us-east-2.compute.internal",
        }
        for dimension, value in (("cpu_core_hours", sub["cores"]), ("memory_byte_hours", sub["memory"]),
                                 ("storage_allocated_byte_hours", sub["storage"]), ("replica_hours", 1)):
            rec = dict(base, dimension=dimension, value=value)
            if sub["priced"]:
                rec["pricePerUnit"] = PRICES[dimension]
            out.append(rec)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--service", default="pg")
    p.add_argument("--environment", default="PROD")
    p.add_argument("--plan", default="pt-HJSv20iWX0")
    p.add_argument("--subscriptions", type=int, default=3)
    p.add_argument("--month", default="2025-06", help="YYYY-MM; all its hours unless --hours")
    p.add_argument("--hours", type=int, help="only the first N hours of the month")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-marker", action="store_true", help="do not write last_success_export.json")
    p.add_argument("--marker-to", help="last_processed_to to write (RFC 3339), instead of the end of the generated hours")
    args = p.parse_args()

    rng = random.Random(args.seed)
    year, month = map(int, args.month.split("-"))
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    hours = args.hours or calendar.monthrange(year, month)[1] * 24
    subs = subscriptions(rng, args.subscriptions, args.plan)
    root = os.path.join(args.out, "omnistrate-metering")
    files = 0
    for h in range(hours):
        hour = start + timedelta(hours=h)
        folder = os.path.join(root, args.service, args.environment, args.plan, hour.strftime("%Y/%m/%d/%H"))
        os.makedirs(folder, exist_ok=True)
        for sub in subs:
            with open(os.path.join(folder, sub["subscriptionId"] + ".json"), "w") as f:
                json.dump(records(rng, sub, hour, args), f, separators=(",", ":"))
            files += 1
    if not args.no_marker:
        end = start + timedelta(hours=hours)
        marker_path = os.path.join(root, "last_success_export.json")
        marker = {}
        if os.path.exists(marker_path):
            with open(marker_path) as f:
                marker = json.load(f)
        last_processed_to = args.marker_to or (end - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        marker[f"{args.service}:{args.environment}:{args.plan}"] = {
            "last_processed_to": last_processed_to,
            "last_updated_at": (end + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        with open(marker_path, "w") as f:
            json.dump(marker, f, indent=2)
    print(f"wrote {files} usage files for {len(subs)} subscriptions x {hours} hours under {root}")


if __name__ == "__main__":
    main()
