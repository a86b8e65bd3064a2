"""Repositories: where flows and their outbox live.

``InMemoryRepository`` for tests, ``SQLiteRepository`` (the embedded default) and
``PostgresRepository`` (needs the ``postgres`` extra; psycopg is imported only when
one is created).
"""

from flowfsm.repositories._common import MAX_WAIT
from flowfsm.repositories.memory import InMemoryRepository
from flowfsm.repositories.postgres import PostgresRepository
from flowfsm.repositories.sqlite import SQLiteRepository

# Plain sorted order, which tests/test_api.py asks of every subpackage.
__all__ = ["InMemoryRepository", "MAX_WAIT", "PostgresRepository", "SQLiteRepository"]  # noqa: RUF022
