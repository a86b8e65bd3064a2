"""Repositories: where flows and their outbox live.

``InMemoryRepository`` for tests, ``SQLiteRepository`` (the embedded default) and
``PostgresRepository`` (needs the ``postgres`` extra, imported only when used).
"""

from flowfsm.repositories.memory import InMemoryRepository
from flowfsm.repositories.sqlite import SQLiteRepository

__all__ = ["InMemoryRepository", "SQLiteRepository"]
