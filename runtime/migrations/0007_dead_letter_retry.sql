-- A reconciled item (a synthetic event re-derived from Postgres state) that keeps failing is
-- dead-lettered under a stable id and parked: its consumer skips it until retry_at, and each
-- retry that fails again doubles the wait, so a poison item costs a few attempts per backoff
-- step instead of max_attempts on every reconcile pass. NULL: never retried automatically
-- (a Kafka event, which is also marked processed). failed_at: the latest dead-lettering.
ALTER TABLE dead_letters
    ADD COLUMN failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN retry_at  TIMESTAMPTZ;
