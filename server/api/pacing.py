"""Pacing: CreateCampaign, UpdateCampaign, GetPacingStatus, PaceBid, RecordSpend.

Time is the request's ``event_time`` (or the server clock). Before any event of a campaign at
time t, the campaign's day must cover t: a new local day is a record of its own
(``campaign_day``), applied and logged first. A PaceBid's record (``pace``) is logged lazily
when it reserves nothing (bid 0 spends no money), and waited for when it does: its answer is
what applying it reserved (replicas apply every replica's bids in one order and may cut it).
"""

from __future__ import annotations

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.ads.pacing import CAPPED, MICROS, PAUSED, RESERVED, Campaign
from banditd.server.api.core import Core
from banditd.server.errors import InvalidArgument, NotFound
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
        await self.core.write_audited(st.WalRecord(create_campaign=config), context,
                                      "CreateCampaign", [config.campaign_id])
        return config

    async def UpdateCampaign(self, request: pb.UpdateCampaignRequest, context) -> pb.Campaign:
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign is required", field="campaign")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else None
        config = self.campaigns.check_update(request.campaign, paths)
        await self.core.write_audited(st.WalRecord(campaign=config), context, "UpdateCampaign",
                                      [config.campaign_id])
        return config

    async def _begin_day(self, campaign: Campaign, t: float) -> None:
        """Apply and log the campaign's new day first if t is past the current one."""
        day = campaign.day_change(t)
        if day is not None:
            await self.core.write(st.WalRecord(campaign_day=day))

    async def GetPacingStatus(self, request: pb.GetPacingStatusRequest, context
                              ) -> pb.PacingStatus:
        campaign = self.campaigns.get(request.campaign_id)
        t = self.core.event_time(request)
        await self._begin_day(campaign, t)
        return campaign.status(t)

    async def PaceBid(self, request: pb.PaceBidRequest, context) -> pb.PaceBidResponse:
        campaign = self.campaigns.get(request.campaign_id)
        t = self.core.event_time(request)
        core = self.core
        core.check_writable()  # a bid spends money: never one the log would not have
        if campaign.day_change(t) is not None:  # (checked first: an awaited coroutine per
            await self._begin_day(campaign, t)  # bid costs more than the check)
        record, response = campaign.decide_bid(request.base_bid, t)
        event = record.pace
        if not event.amount_micros:  # bid 0 spends nothing: nobody waits for its record
            core.write_lazily(record)
            core.metrics.paced(request.campaign_id, False)
            return response
        reserved = await core.write(record, lambda: campaign.apply_pace(event))
        core.metrics.paced(request.campaign_id, bool(reserved))
        if reserved != event.amount_micros:
            # Replicas: other replicas' bids, applied before this one in the shared log's
            # order, left less of the budget than this replica saw: the bid is cut to it.
            response.bid = reserved / MICROS  # type: ignore[operator]
            if not reserved:
                response.bid_id = ""
                reason = PAUSED if campaign.config.paused else RESERVED
            else:
                reason = CAPPED
            response.reason, response.reason_code = reason
        return response

    async def RecordSpend(self, request: pb.RecordSpendRequest, context
                          ) -> pb.RecordSpendResponse:
        campaign = self.campaigns.get(request.campaign_id)
        t = self.core.event_time(request)
        await self._begin_day(campaign, t)
        try:
            checked = campaign.check_settlement(request.bid_id, request.won, request.cost,
                                                request.conversions, t)
        except NotFound:
            if not self.core.shared:
                raise
            # Replicas: the bid may be another replica's, its record not applied here yet.
            await self.core.caught_up()
            await self._begin_day(campaign, t)
            checked = campaign.check_settlement(request.bid_id, request.won, request.cost,
                                                request.conversions, t)
        if isinstance(checked, pb.RecordSpendResponse):  # a retry of a settled bid
            await self.core.synced()  # the original may still be on its way to the disk
            return checked
        if not await self.core.write(st.WalRecord(spend=checked)):
            # Replicas: a retry of this bid reached another replica at the same time, and
            # its settlement came first in the shared log's order.
            return pb.RecordSpendResponse(duplicate=True)
        return pb.RecordSpendResponse(
            charged=checked.charged_micros / MICROS,
            capped=bool(request.won and int(request.cost * MICROS) > checked.charged_micros))
