"""The reward-window sweep: decisions whose window passed without a reward are settled with
their experiment's default reward, as records (``default_rewards``) applied and logged like any
other change.

It runs on a single server, or on one of several replicas (``reward_sweeper``; with
``--workers N`` the first), whose records reach the others through the shared log: once at
start, after restore and
before serving, so decisions whose window passed while the server was down are settled first,
then every ``reward_sweep_interval_seconds``. Each settlement is applied, appended to the log and
committed before the next sweep; a crash before the write loses only the record, and the sweep
after restart settles those decisions again (their state was not logged, so nothing is counted
twice). A reward that arrives after the window but before the sweep is learned as on time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from banditd.server.api.core import Core
from banditd.server.state.settlement import Settlement

log = logging.getLogger("banditd")

SWEEP_ROWS = 20_000  # decisions settled between two chances for requests to run


class RewardWindows:
    """Settles decisions whose reward window passed (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.settlement = Settlement(core.state.experiments, core.state.store)
        self._task: asyncio.Task | None = None

    async def sweep(self, now: float | None = None) -> int:
        """Settle every decision whose window has passed at ``now`` (seconds since the epoch;
        default: the server clock) and wait until their records are durable; returns how many
        were settled."""
        core = self.core
        learning = core.state.learning
        total = 0
        while True:
            found = self.settlement.due(time.time() if now is None else now, SWEEP_ROWS)
            count = 0
            for record, seqs in found:
                if core.storage.shared:  # applied here when the shared log brings it back
                    await core.write(record)
                else:  # check, apply, log: no await in between
                    learning.apply_defaults(record.default_rewards, seqs)
                    if core.logging:
                        core.storage.append(record.SerializeToString())
                count += record.default_rewards.count
            if not found:
                return total
            total += count
            core.metrics.default_rewards.inc(count)
            await core.synced()
            if count < SWEEP_ROWS:
                return total

    def start(self) -> None:
        """Sweep every ``reward_sweep_interval_seconds`` until :meth:`stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        interval = self.core.settings.reward_sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the log refuses writes: retried next time
                log.exception("reward-window sweep failed; retrying in %.2f s", interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
