"""Pacing: CreateCampaign, UpdateCampaign, GetPacingStatus, PaceBid, RecordSpend.

Time is the request's ``event_time`` (or the server clock). Before any event of a campaign at
time t, the campaign's day must cover t: a new local day is a record of its own
(``campaign_day``), applied and logged first. A PaceBid's record (``pace``) is logged lazily
when it reserves nothing (bid 0 spends no money), and waited for when it does.
"""

from __future__ import annotations

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.ads.pacing import MICROS, Campaign
from banditd.server.api.core import Core
from banditd.server.errors import InvalidArgument
from banditd.storage.v1 import storage_pb2 as st


class PacingHandlers:
    RPCS = ("CreateCampaign", "UpdateCampaign", "GetPacingStatus", "PaceBid", "RecordSpend")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.campaigns = core.state.campaigns

    async def CreateCampaign(self, request: pb.CreateCampaignRequest, context) -> pb.Campaign:
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign is required", field="campaign")
        config = self.campaigns.check_create(request.campaign)
        await self.core.write_audited(st.WalRecord(campaign=config), context, "CreateCampaign",
                                      [config.campaign_id])
        return config

    async def UpdateCampaign(self, request: pb.UpdateCampaignRequest, context) -> pb.Campaign:
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign is required", field="campaign")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else None
        config = self.campaigns.check_update(request.campaign, paths)
        await self.core.write_audited(st.WalRecord(campaign=config), context, "UpdateCampaign",
                                      [config.campaign_id])
        return config

    def _begin_day(self, campaign: Campaign, t: float) -> bool:
        """Apply and log (without waiting) the campaign's new day if t is past the current
        one; whether it did (the caller then waits for the log)."""
        record = campaign.day_change(t)
        if record is None:
            return False
        self.core.check_writable()
        wal = st.WalRecord(campaign_day=record)
        self.core.state.apply(wal)
        if self.core.logging:
            self.core.storage.append(wal.SerializeToString())
        return True

    async def GetPacingStatus(self, request: pb.GetPacingStatusRequest, context
                              ) -> pb.PacingStatus:
        campaign = self.campaigns.get(request.campaign_id)
        t = self.core.event_time(request)
        if self._begin_day(campaign, t):
            await self.core.synced()
        return campaign.status(t)

    async def PaceBid(self, request: pb.PaceBidRequest, context) -> pb.PaceBidResponse:
        campaign = self.campaigns.get(request.campaign_id)
        t = self.core.event_time(request)
        self.core.check_writable()  # a bid spends money: never one the log would not have
        new_day = self._begin_day(campaign, t)
        event, response = campaign.decide_bid(request.base_bid, t)
        record = st.WalRecord(pace=event)
        campaign.apply_pace(event)
        core = self.core
        core.metrics.paced(request.campaign_id, event.amount_micros > 0)
        if core.logging:
            if event.amount_micros or new_day:
                core.storage.append(record.SerializeToString())
                await core.synced()
            else:  # bid 0 spends nothing: nobody waits for its record
                core.storage.append_lazily(record.SerializeToString())
        return response

    async def RecordSpend(self, request: pb.RecordSpendRequest, context
                          ) -> pb.RecordSpendResponse:
        campaign = self.campaigns.get(request.campaign_id)
        t = self.core.event_time(request)
        self._begin_day(campaign, t)  # written with the settlement, or waited for below
        checked = campaign.check_settlement(request.bid_id, request.won, request.cost,
                                            request.conversions, t)
        if isinstance(checked, pb.RecordSpendResponse):  # a retry of a settled bid
            await self.core.synced()  # the original may still be on its way to the disk
            return checked
        await self.core.write(st.WalRecord(spend=checked))
        return pb.RecordSpendResponse(
            charged=checked.charged_micros / MICROS,
            capped=bool(request.won and int(request.cost * MICROS) > checked.charged_micros))
