"""A/B/n traffic allocation from daily metrics: ingest each day's numbers, ask for tomorrow's split.

Analysts push yesterday's aggregated impressions and clicks per variant (IngestMetrics,
idempotent per date: a corrected re-send replaces the day). GetAllocation answers the share
of traffic each variant should get tomorrow = probability it is the best.

    python clients/examples/ab_allocation_daily.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys

import grpc
import numpy as np

from banditd.clients import BanditClient

CTR = {"control": 0.030, "variant-b": 0.034, "variant-c": 0.026}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    eid = "example-ab-test"
    with BanditClient(args.target, timeout=30) as bandit:
        with contextlib.suppress(grpc.RpcError):  # start from a clean experiment
            bandit.delete_experiment(eid)
        bandit.create_experiment(eid, list(CTR), "thompson", reward_type="binary", seed=args.seed)
        day = dt.date(2025, 12, 15)
        share = {v: 100.0 / len(CTR) for v in CTR}
        for _ in range(args.days):
            metrics = {}
            for variant, ctr in CTR.items():
                impressions = int(20_000 * share[variant] / 100)
                metrics[variant] = (impressions, int(rng.binomial(impressions, ctr)))
            bandit.ingest_metrics(eid, day.isoformat(), metrics)
            # A corrected re-send of the same day replaces it: no double counting.
            again = bandit.ingest_metrics(eid, day.isoformat(), metrics)
            assert again.replaced_arms == len(CTR)
            alloc = bandit.get_allocation(eid, num_draws=10_000, seed=1, min_percentage=5.0)
            share = {a.arm_id: a.percentage for a in alloc.allocations}
            total = round(sum(share.values()), 6)
            print(f"{day}: next period {alloc.next_period} -> " +
                  ", ".join(f"{k} {v:.2f}%" for k, v in share.items()), flush=True)
            assert total == 100.0, f"percentages sum to {total}"
            assert alloc.next_period == (day + dt.timedelta(days=1)).isoformat()
            assert min(share.values()) >= 5.0
            day += dt.timedelta(days=1)
        stats = {a.arm_id: a for a in bandit.get_arm_stats(eid).arms}
        for variant in CTR:
            s = stats[variant]
            print(f"{variant:10} trials {s.trials:8.0f} CTR {s.conversion_rate:.4f} "
                  f"P(best) {s.probability_best:.3f}")
        if max(share, key=lambda k: share[k]) != "variant-b":
            print("FAIL: the best variant should get the largest share", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
