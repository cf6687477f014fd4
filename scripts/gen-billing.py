#!/usr/bin/env python3
"""Generates AWS detailed billing files (DBR with resources and tags) for tests and benchmarks.

  scripts/gen-billing.py --out DIR [--account 123456789012] [--month 2025-06 ...] [--lines N]
                         [--layout 0|1|2] [--plain] [--no-totals] [--through YYYY-MM-DD]
                         [--bad-rows] [--expect FILE.json] [--seed N]

One file per month: {account}-aws-billing-detailed-line-items-with-resources-and-tags-YYYY-MM.csv.zip
(or .csv with --plain). Each has hourly usage line items for a handful of users under one of three
tag layouts (tag columns differ in name and order; by default the layout rotates per month),
untagged items, DiscountedUsage and Tax rows, items that straddle midnight and the month's end,
costs in plain and exponent form (never more than 9 decimals, so sums are exact in nano-dollars),
and Rounding, AccountTotal, InvoiceTotal and StatementTotal rows whose totals match the items.

--expect writes what a correct reader must find, computed here with exact decimals: line items,
spend per user, per UTC day, per UTC hour and user, per product, the invoice total, and the
lines of the bad rows (--bad-rows). Costs in it are integer nano-dollars.
"""
import argparse
import calendar
import csv
import datetime as dt
import io
import json
import os
import random
import sys
import zipfile
from decimal import Decimal

FIXED = ["InvoiceID", "PayerAccountId", "LinkedAccountId", "RecordType", "RecordId", "ProductName",
         "RateId", "SubscriptionId", "PricingPlanId", "UsageType", "Operation", "AvailabilityZone",
         "ReservedInstance", "ItemDescription", "UsageStartDate", "UsageEndDate", "UsageQuantity",
         "BlendedRate", "BlendedCost", "UnBlendedRate", "UnBlendedCost", "ResourceId"]
# Three tag layouts: which tag columns exist, in which order.
LAYOUTS = [
    ["user:Name", "user:Owner", "user:Project"],
    ["user:Application", "user:ProjectName", "user:Project"],
    ["aws:createdBy", "user:Owner", "user:Name", "user:ProjectName"],
]
USER_TAGS = ["user:Owner", "user:Project", "user:ProjectName", "user:Name"]
USERS = ["alice", "bob", "carol", "dave", "erin"]
PRODUCTS = [("Amazon Elastic Compute Cloud", "BoxUsage:m5.large", "RunInstances", "i-"),
            ("Amazon Simple Storage Service", "TimedStorage-ByteHrs", "StandardStorage", "bucket-"),
            ("Amazon Relational Database Service", "InstanceUsage:db.t3.medium", "CreateDBInstance", "db-"),
            ("AWS Lambda", "Request", "Invoke", "fn-")]
LINKED = ["210987654321", "310987654321"]
NANO = Decimal("0.000000001")


def nanos(text):
    return int((Decimal(text) / NANO).to_integral_exact())


def cost_text(rng, exponent):
    """A cost with at most 9 decimals, as text: plain or in exponent form."""
    if exponent:
        mantissa = rng.randint(1000, 9999)  # 4 significant digits
        exp = rng.randint(-5, 0)
        return "%d.%03de%+03d" % (mantissa // 1000, mantissa % 1000, exp)
    return str(Decimal(rng.randint(1, 5_000_000_000)) * NANO)


def tag_values(rng, layout, user):
    """Tag cells for a user under a layout; the user must come out of USER_TAGS' rule."""
    cells = {name: "" for name in layout}
    if user is None:
        if "user:Application" in cells:
            cells["user:Application"] = "shared-infra"
        if "aws:createdBy" in cells:
            cells["aws:createdBy"] = "IAMUser:AIDA:ci"
        return cells
    carriers = [t for t in USER_TAGS if t in cells]
    carrier = rng.choice(carriers)
    cells[carrier] = user
    # Tags after the carrier in USER_TAGS may hold other values: the first non-empty must win.
    for t in USER_TAGS[USER_TAGS.index(carrier) + 1:]:
        if t in cells and rng.random() < 0.5:
            cells[t] = "not-" + user
    return cells


def resolve_user(tags):
    for t in USER_TAGS:
        v = tags.get(t, "").strip()
        if v:
            return v
    return None


def month_rows(args, rng, year, month, layout, expect):
    days = calendar.monthrange(year, month)[1]
    start = dt.datetime(year, month, 1)
    end = start + dt.timedelta(days=days)
    through = dt.datetime.fromisoformat(args.through) + dt.timedelta(days=1) if args.through else end
    hours = max(1, int((min(end, through) - start).total_seconds() // 3600))
    per_hour = max(1, args.lines // hours)
    fmt = "%Y-%m-%d %H:%M:%S"
    record_id = 0
    linked_sums = {}

    def item(record_type, product, start_t, end_t, user, cost, quantity="1.0"):
        nonlocal record_id
        record_id += 1
        name, usage_type, operation, prefix = product
        linked = LINKED[record_id % len(LINKED)]
        resource = "%s%04d" % (prefix, (USERS.index(user) * 10 + record_id % 10) if user else record_id % 50)
        tags = tag_values(rng, layout, user)
        row = ["Estimated", args.account, linked, record_type, str(record_id), name, "1", "2", "3",
               usage_type, operation, "us-west-2a", "N", "%s usage" % name,
               start_t.strftime(fmt) if start_t else "", end_t.strftime(fmt) if end_t else "",
               quantity, "0.0912", cost, "0.0912", cost, resource] + [tags[t] for t in layout]
        n = nanos(cost)
        linked_sums[linked] = linked_sums.get(linked, 0) + n
        expect_item(expect, resolve_user(tags), name, start_t, n)
        return row

    for h in range(hours):
        t = start + dt.timedelta(hours=h)
        for i in range(per_hour):
            user = USERS[(h + i) % len(USERS)] if (h * per_hour + i) % 7 else None
            product = PRODUCTS[(h + i) % len(PRODUCTS)]
            record_type = "DiscountedUsage" if i % 11 == 5 else "LineItem"
            exponent = (h + i) % 5 == 0
            if i == 0 and t.hour == 23:
                # Straddles midnight (and, on the last day, the month's end).
                yield item(record_type, product, t + dt.timedelta(minutes=30),
                           t + dt.timedelta(minutes=90), user, cost_text(rng, exponent))
            else:
                yield item(record_type, product, t, t + dt.timedelta(hours=1), user,
                           cost_text(rng, exponent), "%.6f" % rng.random())
    yield item("Tax", ("Tax", "", "", "tax-"), start, end, None, "1.230000000")
    if args.bad_rows:
        bad = [["Estimated", args.account, LINKED[0], "LineItem", "x", "AWS Lambda", "1", "2", "3", "Request",
                "Invoke", "", "N", "bad cost", start.strftime(fmt), start.strftime(fmt), "1", "0.1", "12,34x",
                "0.1", "0.1", "fn-bad"] + ["" for _ in layout],
               ["Estimated", args.account, LINKED[0], "LineItem", "y", "AWS Lambda", "1", "2", "3", "Request",
                "Invoke", "", "N", "bad date", "%04d-%02d-31 25:00:00" % (year, month), "", "1", "0.1", "0.5",
                "0.1", "0.5", "fn-bad"] + ["" for _ in layout],
               ["Estimated", args.account, "short row"]]
        for row in bad:
            expect["problem_rows"] += 1
            yield row
    if args.no_totals:
        return
    rounding = "0.000000300"
    total = expect["line_item_nanos"] + nanos(rounding)
    totals = [("Rounding", "", rounding)]
    totals += [("AccountTotal", acct, str(Decimal(n) * NANO)) for acct, n in sorted(linked_sums.items())]
    totals += [("InvoiceTotal", "", str(Decimal(total) * NANO)),
               ("StatementTotal", "", str(Decimal(total) * NANO))]
    for record_type, linked, cost in totals:
        yield ["Estimated", args.account, linked, record_type, "", "", "", "", "", "", "", "", "",
               "Total %s" % record_type, "", "", "", "", cost, "", cost, ""] + ["" for _ in layout]
    expect["invoice_nanos"] = total


def expect_item(expect, user, product, start_t, n):
    expect["line_items"] += 1
    expect["line_item_nanos"] += n
    if not expect["detailed"]:
        return
    user = user or "(untagged)"
    day = start_t.strftime("%Y-%m-%d")
    hour = start_t.strftime("%Y-%m-%dT%H")
    expect["by_user"][user] = expect["by_user"].get(user, 0) + n
    expect["by_day"][day] = expect["by_day"].get(day, 0) + n
    expect["by_product"][product] = expect["by_product"].get(product, 0) + n
    hours = expect["by_hour_user"].setdefault(hour, {})
    hours[user] = hours.get(user, 0) + n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--account", default="123456789012")
    p.add_argument("--month", action="append", help="YYYY-MM; repeatable (default 2025-06)")
    p.add_argument("--lines", type=int, default=2000, help="line items per month, roughly")
    p.add_argument("--layout", type=int, choices=range(len(LAYOUTS)), help="tag layout (default: rotate)")
    p.add_argument("--plain", action="store_true", help="write .csv instead of .csv.zip")
    p.add_argument("--no-totals", action="store_true", help="a month in progress: no total rows")
    p.add_argument("--through", help="last day with usage, YYYY-MM-DD (a month in progress)")
    p.add_argument("--bad-rows", action="store_true", help="add three bad rows per month")
    p.add_argument("--expect", help="write the expected sums here (JSON)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    expects = []
    for index, m in enumerate(args.month or ["2025-06"]):
        year, month = (int(x) for x in m.split("-"))
        layout = LAYOUTS[args.layout if args.layout is not None else index % len(LAYOUTS)]
        expect = {"month": m, "line_items": 0, "line_item_nanos": 0, "problem_rows": 0,
                  "invoice_nanos": None, "detailed": args.expect is not None,
                  "by_user": {}, "by_day": {}, "by_product": {}, "by_hour_user": {}}
        name = "%s-aws-billing-detailed-line-items-with-resources-and-tags-%s.csv" % (args.account, m)
        path = os.path.join(args.out, name if args.plain else name + ".zip")
        with open(path, "wb") as raw:
            if args.plain:
                sink, closer = io.TextIOWrapper(raw, encoding="utf-8", newline=""), None
            else:
                archive = zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
                entry = archive.open(name, "w", force_zip64=True)
                sink, closer = io.TextIOWrapper(entry, encoding="utf-8", newline=""), archive
            writer = csv.writer(sink, lineterminator="\n")
            writer.writerow(FIXED + layout)
            for row in month_rows(args, rng, year, month, layout, expect):
                writer.writerow(row)
            sink.flush()
            sink.close()
            if closer:
                closer.close()
        del expect["detailed"]
        expects.append(expect)
        print(path)
    if args.expect:
        with open(args.expect, "w") as f:
            json.dump(expects, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
