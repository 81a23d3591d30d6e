"""Analyst RPCs: IngestMetrics, GetArmStats, GetAllocation, AllocateBudget."""

from __future__ import annotations

import asyncio
from typing import cast

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.ads.budget import allocate_budget
from banditd.server.api.core import Core
from banditd.server.api.warmup import ALLOCATION
from banditd.server.state import analytics
from banditd.storage.v1 import storage_pb2 as st


class AnalyticsHandlers:
    RPCS = ("IngestMetrics", "GetArmStats", "GetAllocation", "AllocateBudget")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.experiments = core.state.experiments
        self.settings = core.settings

    async def IngestMetrics(self, request: pb.IngestMetricsRequest, context
                            ) -> pb.IngestMetricsResponse:
        analytics.check_ingest(self.experiments.get(request.experiment_id), request,
                               self.settings.max_ingest_periods)
        counts = await self.core.write_audited(
            st.WalRecord(ingest_metrics=request), context, "IngestMetrics",
            [request.experiment_id, request.period])
        replaced, new = cast(tuple[int, int], counts)
        return pb.IngestMetricsResponse(replaced_arms=replaced, new_arms=new)

    async def GetArmStats(self, request: pb.GetArmStatsRequest, context
                          ) -> pb.GetArmStatsResponse:
        await self.core.kernels.ensure(ALLOCATION)  # before the state is read
        job = analytics.arm_stats_job(self.experiments.get(request.experiment_id))
        return await asyncio.to_thread(job)  # Monte-Carlo off the event loop

    async def GetAllocation(self, request: pb.GetAllocationRequest, context
                            ) -> pb.GetAllocationResponse:
        await self.core.kernels.ensure(ALLOCATION)  # before the state is read
        job = analytics.allocation_job(self.experiments.get(request.experiment_id), request,
                                       self.settings.max_monte_carlo_samples)
        return await asyncio.to_thread(job)  # Monte-Carlo off the event loop

    async def AllocateBudget(self, request: pb.AllocateBudgetRequest, context
                             ) -> pb.AllocateBudgetResponse:
        if request.strategy == pb.ALLOCATION_STRATEGY_THOMPSON:
            await self.core.kernels.ensure(ALLOCATION)
        split = await asyncio.to_thread(  # pure; THOMPSON runs Monte-Carlo
            allocate_budget, request, self.settings.budget_min_allocation,
            self.settings.budget_max_allocation, self.settings.max_monte_carlo_samples)
        return pb.AllocateBudgetResponse(allocations=[
            pb.GroupAllocation(id=i, amount=a, share=float(s))
            for i, a, s in zip(split.ids, split.amounts, split.shares, strict=True)])
