"""The fault suite (issue 14): each fault scripted against the real Postgres and broker,
asserting 0 lost, 0 duplicated, every service still running and dead letters exactly where
expected."""
