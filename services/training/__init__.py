"""Training service: runs trainer jobs on Postgres triples and publishes model versions."""
