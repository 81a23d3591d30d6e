"""Budget split across ad groups: every AllocateBudget strategy on the same account.

    python clients/examples/budget_split.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from banditd.clients import BanditClient

GROUPS: list[dict[str, Any]] = [
    {"id": "brand-exact", "spend": 400, "impressions": 20_000, "clicks": 1_400,
     "conversions": 140, "revenue": 5_600},
    {"id": "generic-broad", "spend": 900, "impressions": 150_000, "clicks": 2_100,
     "conversions": 60, "revenue": 2_700},
    {"id": "competitor", "spend": 300, "impressions": 30_000, "clicks": 600,
     "conversions": 24, "revenue": 960},
    {"id": "retargeting", "spend": 250, "impressions": 40_000, "clicks": 900,
     "conversions": 81, "revenue": 3_240},
    {"id": "new-launch"},  # no data yet: treated as an average performer
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--total", type=float, default=1000.0)
    args = ap.parse_args()
    ok = True
    with BanditClient(args.target, timeout=30) as bandit:
        for strategy in ("equal", "performance_based", "roas_optimized", "cpa_optimized",
                         "thompson"):
            reply = bandit.allocate_budget(args.total, GROUPS, strategy, min_allocation=50,
                                           max_allocation=600, seed=1)
            amounts = {a.id: a.amount for a in reply.allocations}
            cents = sum(round(a * 100) for a in amounts.values())
            print(f"{strategy:18} " + "  ".join(f"{k} {v:7.2f}" for k, v in amounts.items()))
            if cents != round(args.total * 100) or min(amounts.values()) < 50 or \
                    max(amounts.values()) > 600:
                print(f"FAIL: {strategy} broke the total or the bounds", file=sys.stderr)
                ok = False
            if strategy == "roas_optimized":
                # ROAS: brand 14, retargeting 12.96, competitor 3.2, generic 3.0
                order = sorted(["brand-exact", "retargeting", "competitor", "generic-broad"],
                               key=lambda k: amounts[k], reverse=True)
                ok &= order == ["brand-exact", "retargeting", "competitor", "generic-broad"]
            if strategy == "equal":
                ok &= all(math.isclose(v, args.total / len(GROUPS)) for v in amounts.values())
    if not ok:
        print("FAIL: unexpected allocation", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
