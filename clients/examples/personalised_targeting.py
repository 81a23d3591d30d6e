"""Personalised targeting with LinUCB over user features: which creative for which user.

The context is a user feature vector (recency, frequency, device, interest scores); the
reward is a click (0/1). LinUCB learns each creative's click model and picks the one with
the best upper confidence bound for this user.

    python clients/examples/personalised_targeting.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import grpc
import numpy as np

from banditd.clients import BanditClient
from banditd.decision.v1 import decision_pb2 as pb

CREATIVES = ["sports", "travel", "tech", "fashion", "finance"]
DIM = 6


def ctr(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ theta.T)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--users", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    theta = rng.normal(scale=0.6, size=(len(CREATIVES), DIM))
    theta[:, 0] = -3.0  # base CTR of a few percent; user features move it up to ~10x
    eid = "example-targeting"
    with BanditClient(args.target, timeout=30) as bandit:
        with contextlib.suppress(grpc.RpcError):  # start from a clean experiment
            bandit.delete_experiment(eid)
        bandit.create_experiment(eid, CREATIVES, "lin_ucb", context_dim=DIM,
                                 reward_type="binary", seed=args.seed, alpha=0.5)
        clicks = 0.0
        late_clicks = late_random = late_oracle = 0.0
        batch = 500
        for start in range(0, args.users, batch):
            x = rng.normal(size=(batch, DIM))
            x[:, 0] = 1.0
            p = ctr(x, theta)
            decisions = bandit.batch_select_arms([
                pb.SelectArmRequest(experiment_id=eid, context=row.tolist()) for row in x
            ]).responses
            rewards = []
            for i, d in enumerate(decisions):
                arm = CREATIVES.index(d.arm_id)
                click = float(rng.random() < p[i, arm])
                clicks += click
                if start >= args.users * 3 // 4:
                    late_clicks += p[i, arm]
                    late_random += p[i].mean()
                    late_oracle += p[i].max()
                rewards.append(pb.RecordRewardRequest(
                    experiment_id=eid, decision_id=d.decision_id, reward=click))
            bandit.batch_record_rewards(rewards)
            seen = start + batch
            print(f"{seen:>5} users, CTR so far {clicks / seen:.4f}", flush=True)
        lift = late_clicks / late_random - 1.0
        print(f"last quarter expected CTR: banditd {late_clicks / (args.users / 4):.4f}, "
              f"random {late_random / (args.users / 4):.4f}, oracle "
              f"{late_oracle / (args.users / 4):.4f} (lift over random {lift:+.0%})")
        if lift < 0.5:
            print("FAIL: LinUCB should clearly beat random targeting", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
