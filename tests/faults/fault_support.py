"""Helpers of the fault suite: a counting handler whose effect is visible per key, and
dead-letter reads (the threaded consumer lives in tests/support/consumers.py)."""

from __future__ import annotations

import psycopg

from runtime.bus import Event
from tests.support.consumers import Running, page_topic

__all__ = ["Running", "count_once", "counting_table", "counts", "dead_letters", "page_topic"]


def counting_table(url: str, table: str) -> None:
    """`table(k, n)`: how many times each key's effect was applied (must end at 1)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, n INT NOT NULL)")


def count_once(conn: psycopg.Connection, table: str, key: str) -> None:
    conn.execute(f"INSERT INTO {table} (k, n) VALUES (%s, 1) "
                 "ON CONFLICT (k) DO UPDATE SET n = {table}.n + 1".replace("{table}", table),
                 (key,))


def counts(url: str, table: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"SELECT k, n FROM {table}").fetchall())


def dead_letters(url: str, consumer: str) -> list[dict]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT event_id, topic, msg_key, error, attempts "
                            "FROM dead_letters WHERE consumer = %s ORDER BY failed_at",
                            (consumer,)).fetchall()


def url_of(event: Event) -> str:
    return event.message.url
