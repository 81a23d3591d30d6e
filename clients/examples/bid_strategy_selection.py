"""Bid-strategy selection per campaign with linear Thompson sampling over campaign features.

Arms are Google-Ads-style bid strategies; the context describes the campaign (conversion
volume, average order value, budget pressure, brand share). Which strategy earns the most
profit depends on those features, so a contextual policy learns a different choice per
campaign type. The reward is the day's profit index reported back for the decision.

    python clients/examples/bid_strategy_selection.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import grpc
import numpy as np

from banditd.clients import BanditClient
from banditd.decision.v1 import decision_pb2 as pb

STRATEGIES = ["target_cpa", "target_roas", "maximize_conversions", "manual_cpc"]
# Profit index = theta . [1, conv_volume, order_value, budget_pressure, brand_share] + noise
THETA = np.array([
    [1.0, 0.8, -0.2, 0.1, -0.3],   # target_cpa: many conversions, uniform value
    [1.0, 0.3, 0.9, -0.2, -0.2],   # target_roas: high, variable order value
    [1.2, -0.4, 0.1, -0.9, 0.0],   # maximize_conversions: plenty of budget
    [0.9, -0.6, -0.3, 0.3, 0.8],   # manual_cpc: brand campaigns, little data
])
DIM = THETA.shape[1]


def campaigns(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM))
    x[:, 0] = 1.0
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--rounds", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    eid = "example-bid-strategy"
    with BanditClient(args.target, timeout=30) as bandit:
        with contextlib.suppress(grpc.RpcError):  # start from a clean experiment
            bandit.delete_experiment(eid)
        bandit.create_experiment(eid, STRATEGIES, "lin_thompson", context_dim=DIM,
                                 reward_type="continuous", seed=args.seed, v=0.3)
        batch = 500
        late_hits = late_n = 0
        earned = best_possible = 0.0
        for start in range(0, args.rounds, batch):
            x = campaigns(rng, batch)
            decisions = bandit.batch_select_arms([
                pb.SelectArmRequest(experiment_id=eid, context=row.tolist()) for row in x
            ]).responses
            expected = x @ THETA.T
            rewards = []
            for i, d in enumerate(decisions):
                arm = STRATEGIES.index(d.arm_id)
                profit = float(expected[i, arm] + rng.normal(scale=0.5))
                earned += expected[i, arm]
                best_possible += expected[i].max()
                if start >= args.rounds * 3 // 4:
                    late_n += 1
                    late_hits += int(arm == int(expected[i].argmax()))
                rewards.append(pb.RecordRewardRequest(
                    experiment_id=eid, decision_id=d.decision_id, reward=profit))
            bandit.batch_record_rewards(rewards)
            print(f"{start + batch:>5} campaign-days, regret so far {best_possible - earned:9.1f}",
                  flush=True)
        x = campaigns(np.random.default_rng(args.seed + 1), 20_000)
        random_profit = float((x @ THETA.T).mean())
        hit_rate = late_hits / late_n
        print(f"last quarter: best strategy chosen {hit_rate:.1%} of the time "
              f"(random choice: {1 / len(STRATEGIES):.0%}); mean profit/day with banditd "
              f"{earned / args.rounds:.3f} vs random {random_profit:.3f}")
        if hit_rate < 0.7:
            print("FAIL: linear Thompson should learn the per-campaign best strategy",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
