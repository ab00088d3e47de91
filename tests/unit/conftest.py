"""The unit tier: pure functions, no servers. A test here that asks for the database or Redis
(through ``env``, ``db``, ``app``, ``client``...) fails at once instead of starting them."""

from __future__ import annotations

from typing import NoReturn

import pytest


@pytest.fixture(scope="session")
def servers() -> NoReturn:
    pytest.fail("a unit test uses no servers: move this test out of tests/unit")
