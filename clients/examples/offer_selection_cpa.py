"""Offer selection for a CPA network: value objective (conversion rate x payout), eligible offers.

Each visitor is eligible for a subset of offers (geo / device rules). banditd picks the offer
that maximises expected revenue per click (CR x payout) with Thompson sampling for value
experiments; conversions are reported later with their payout as the reward (0 = none).

    python clients/examples/offer_selection_cpa.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys

import grpc

from banditd.clients import BanditClient
from banditd.decision.v1 import decision_pb2 as pb

# offer -> (conversion rate, payout per conversion); EPC = CR x payout
OFFERS = {
    "dating-us": (0.020, 45.0),   # EPC 0.90  <- best overall
    "sweeps-eu": (0.080, 6.0),    # EPC 0.48  (highest CR, low payout)
    "vpn-global": (0.030, 20.0),  # EPC 0.60
    "nutra-us": (0.010, 60.0),    # EPC 0.60
    "finance-uk": (0.004, 120.0),  # EPC 0.48
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--visitors", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    eid = "example-offer-router"
    with BanditClient(args.target, timeout=30) as bandit:
        with contextlib.suppress(grpc.RpcError):  # start from a clean experiment
            bandit.delete_experiment(eid)
        bandit.create_experiment(eid, list(OFFERS), "thompson", reward_type="value",
                                 seed=args.seed, value_prior_mean=20.0)
        offers = list(OFFERS)
        revenue = 0.0
        late_picks = {o: 0 for o in offers}
        batch = 1000
        for start in range(0, args.visitors, batch):
            requests, eligible_sets = [], []
            for _ in range(batch):
                eligible = rnd.sample(offers, rnd.randint(2, len(offers)))
                eligible_sets.append(eligible)
                requests.append(pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=eligible))
            decisions = bandit.batch_select_arms(requests).responses
            rewards = []
            for d, eligible in zip(decisions, eligible_sets, strict=True):
                assert d.arm_id in eligible, "banditd chose an ineligible offer"
                cr, payout = OFFERS[d.arm_id]
                value = payout if rnd.random() < cr else 0.0
                revenue += value
                if start >= args.visitors * 3 // 4 and "dating-us" in eligible:
                    late_picks[d.arm_id] += 1
                rewards.append(pb.RecordRewardRequest(
                    experiment_id=eid, decision_id=d.decision_id, reward=value))
            bandit.batch_record_rewards(rewards)
            print(f"{start + batch:>6} visitors, revenue {revenue:10.2f}", flush=True)
        stats = {a.arm_id: a for a in bandit.get_arm_stats(eid).arms}
        best_epc = max(cr * p for cr, p in OFFERS.values())
        oracle = args.visitors * best_epc  # upper bound ignoring eligibility
        print("offer        selections  revenue/visitor")
        for o in offers:
            a = stats[o]
            print(f"{o:12} {a.selections:10d}  {a.mean_reward:8.3f}")
        share = late_picks["dating-us"] / max(1, sum(late_picks.values()))
        print(f"last quarter: best offer chosen in {share:.1%} of visits where it was eligible")
        print(f"revenue {revenue:.2f} (oracle bound {oracle:.2f})")
        if share < 0.6:
            print("FAIL: the best-EPC offer should dominate once learned", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
