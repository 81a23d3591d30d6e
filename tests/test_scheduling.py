"""server.scheduling.ThreadTimers: timers whose waiting is done by a helper thread, their
callbacks run on the event loop's thread."""

from __future__ import annotations

import asyncio
import threading
import time

import banditd.server.scheduling as scheduling
from banditd.server.scheduling import ThreadTimers


def test_callbacks_run_on_the_loop_thread_in_due_order_and_cancelled_ones_never():
    async def main():
        timers = ThreadTimers(asyncio.get_running_loop())
        ran: list[tuple[str, int]] = []
        done = asyncio.Event()
        loop_thread = threading.get_ident()
        start = time.monotonic()

        def note(name: str):
            def callback():
                ran.append((name, threading.get_ident()))
                if name == "last":
                    done.set()
            return callback

        handles = {name: timers.call_later(delay, note(name))
                   for name, delay in (("last", 0.08), ("first", 0.01), ("gone", 0.02),
                                       ("second", 0.03))}
        handles["gone"].cancel()
        await asyncio.wait_for(done.wait(), 30)
        timers.close()
        assert [name for name, _ in ran] == ["first", "second", "last"]
        assert {thread for _, thread in ran} == {loop_thread}
        assert handles["last"].when() >= start + 0.08
        assert time.monotonic() >= handles["last"].when()  # never early

    asyncio.run(main())


def test_sleep_returns_after_the_delay_and_cancelling_it_drops_its_timer():
    async def main():
        timers = ThreadTimers(asyncio.get_running_loop())
        t0 = time.monotonic()
        await timers.sleep(0.02)
        assert time.monotonic() - t0 >= 0.02
        task = asyncio.get_running_loop().create_task(timers.sleep(3600))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert all(handle.cancelled for _, _, handle in timers._heap)
        timers.close()

    asyncio.run(main())


def test_idle_thread_ends_and_the_next_timer_starts_another(monkeypatch):
    monkeypatch.setattr(scheduling, "IDLE_SECONDS", 0.05)

    async def main():
        timers = ThreadTimers(asyncio.get_running_loop())
        await timers.sleep(0.001)
        first = timers._thread
        assert first is not None
        first.join(timeout=30)  # nothing left to wait for: it ends
        assert timers._thread is None
        await timers.sleep(0.001)  # and a new timer still fires
        assert timers._thread is not None and timers._thread is not first
        timers.close()
        assert timers._thread is None or not timers._thread.is_alive()

    asyncio.run(main())


def test_a_far_off_or_infinite_timer_does_not_stop_the_others():
    """Condition.wait overflows past threading.TIMEOUT_MAX; a snapshot interval of 1e10 s
    or inf must not take the thread down with the decision log's timer behind it."""

    async def main():
        timers = ThreadTimers(asyncio.get_running_loop())
        far = timers.call_later(float("inf"), lambda: None)
        timers.call_later(1e10, lambda: None)
        await asyncio.sleep(0.05)  # the thread is waiting on the far ones
        await asyncio.wait_for(timers.sleep(0.01), 30)
        assert not far.cancelled and timers._thread is not None and timers._thread.is_alive()
        timers.close()

    asyncio.run(main())


def test_a_closed_loop_ends_the_thread_and_the_next_loop_gets_new_timers(tmp_path):
    """Timers made on a loop that has closed never run; Durability.timers() then makes new
    ones on the running loop, and the decision log's timer is set again there."""
    from banditd.server.api.app import standalone_parts
    from banditd.server.settings import Settings
    from banditd.server.storage.durability import Durability

    durability: Durability = standalone_parts(
        Settings(host="127.0.0.1", port=0, data_dir=tmp_path)).storage

    async def first():
        durability.timers().call_later(0.05, lambda: None)
        return durability.timers()

    old = asyncio.run(first())
    deadline = time.monotonic() + 30
    while old._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # its timer came due on a closed loop: the thread ended
    assert old._thread is None and not old._heap

    async def second():
        fired = asyncio.Event()
        durability.timers().call_later(0.01, fired.set)
        await asyncio.wait_for(fired.wait(), 30)
        return durability.timers()

    assert asyncio.run(second()) is not old
