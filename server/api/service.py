"""The DecisionService: every RPC's behaviour, by resource (experiments, decisions, the
decision log, analytics, pacing), over one shared :class:`core.Core`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from banditd.server.api.analytics import AnalyticsHandlers
from banditd.server.api.core import Core
from banditd.server.api.decision_log import DecisionLogHandlers
from banditd.server.api.decisions import DecisionHandlers
from banditd.server.api.experiments import ExperimentHandlers
from banditd.server.api.metrics import Metrics
from banditd.server.api.pacing import PacingHandlers
from banditd.server.api.reward_windows import RewardWindows


class DecisionService:
    """decision.v1.DecisionService: the behaviour of every RPC, by name, from the handlers of
    each resource (experiments, decisions, the decision log, analytics, pacing)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.decisions = DecisionHandlers(core)
        self.resources = (ExperimentHandlers(core), self.decisions, DecisionLogHandlers(core),
                          AnalyticsHandlers(core), PacingHandlers(core))
        self.reward_windows = RewardWindows(core)

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics

    def behaviors(self) -> dict[str, Callable[..., Any]]:
        """RPC name -> its behaviour (request message in, response message out; for a
        server-streaming RPC an async generator of response messages)."""
        out: dict[str, Callable[..., Any]] = {}
        for resource in self.resources:
            for name in resource.RPCS:
                out[name] = getattr(resource, name)
        return out
