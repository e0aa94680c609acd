"""The stop check of the consumer loops."""

from __future__ import annotations

import asyncio

from detector.runtime import raise_if_stopping


async def _swallowing_loop(turns: list[int]) -> None:
    """A consumer loop whose awaited call loses the first cancel, as a library can."""
    while True:
        raise_if_stopping()
        turns.append(1)
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            pass  # swallowed: without the check the loop would run on for ever


async def test_a_loop_that_loses_a_cancel_still_ends_on_its_next_turn() -> None:
    turns: list[int] = []
    task = asyncio.create_task(_swallowing_loop(turns))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done and task.cancelled()
    before = len(turns)
    await asyncio.sleep(0.05)
    assert len(turns) == before  # nothing runs after the end
