"""The outbox relay as a workload of its own: more publishers for a busy outbox."""
