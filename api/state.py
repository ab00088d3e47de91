"""What the API process holds for its lifetime, and the dependency that hands it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from shared.auth.service import LiveKeys
from shared.db.database import Database
from shared.db.group_commit import GroupCommitter
from shared.queue import Queue
from shared.settings import Settings


@dataclass(slots=True)
class AppState:
    """Built in the lifespan; closed there too (``close``)."""

    settings: Settings
    db: Database
    queue: Queue
    committers: dict[str, GroupCommitter[Any]] = field(default_factory=dict)
    live_keys: LiveKeys = field(default_factory=LiveKeys)

    def group_committer(self, query: str) -> GroupCommitter[Any]:
        """The one ``GroupCommitter`` of ``query`` in this process, built on first use."""
        committer = self.committers.get(query)
        if committer is None:
            committer = self.committers[query] = GroupCommitter(self.db, query)
        return committer

    async def close(self) -> None:
        for committer in self.committers.values():
            await committer.close()
        await self.queue.close()
        await self.db.close()


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.stockroom
    return state


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in the thread pool
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]
