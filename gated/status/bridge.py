"""The screen's one way to the gate: the guard desk's actions and the gate's snapshot.

Both run on the controller's thread (``Controller.submit``) and are awaited on the
screen's event loop without blocking it. The server and the guard's actions depend
on this bridge, not on each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gated.desk import GuardDesk

if TYPE_CHECKING:
    from gated.controller import Controller

T = TypeVar("T")

#: How long an action and a snapshot may take on the controller before the screen gives up.
ACTION_TIMEOUT_S = 5.0
SNAPSHOT_TIMEOUT_S = 3.0


class GateBridge:
    """The controller as the screen sees it: its desk, its snapshot, its events."""

    def __init__(self, controller: Controller):
        self._controller = controller
        self.desk: GuardDesk = controller.desk

    def watch(self, observe: Callable[[dict[str, Any]], None], changed: Callable[[], None]) -> None:
        """Have ``observe`` called with every committed event and ``changed`` when the state
        moves with no event (both on the controller thread: they must only hand over)."""
        self._controller.observers.append(observe)
        self._controller.state_watchers.append(changed)

    async def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn`` on the controller thread; await its result for up to ``timeout`` s.

        The wait is shielded: a timeout here must not cancel the controller's future
        (the controller would then fail to set its result)."""
        fut = asyncio.wrap_future(self._controller.submit(fn))
        result: T = await asyncio.wait_for(asyncio.shield(fut), timeout)
        return result

    async def act(self, action: Callable[[GuardDesk], T], timeout: float = ACTION_TIMEOUT_S) -> T:
        """Run ``action(desk)`` on the controller thread and await what it returns."""
        desk = self.desk
        return await self.call(lambda: action(desk), timeout)

    async def snapshot(self, timeout: float = SNAPSHOT_TIMEOUT_S) -> dict[str, Any]:
        """The desk's snapshot of the gate."""
        return await self.call(self.desk.snapshot, timeout)
