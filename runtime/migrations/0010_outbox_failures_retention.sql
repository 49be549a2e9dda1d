-- Issue 14: one outbox row can no longer block the relay, and the bookkeeping tables stop
-- growing without bound.
-- A row the broker refuses for the row's own sake (too large, an invalid topic) counts an
-- attempt; after the relay's max attempts it is parked (failed_at) with the error and the
-- rows behind it go on. Broker outages never count. To retry a parked row:
-- UPDATE outbox SET failed_at = NULL, attempts = 0 WHERE id = ...
ALTER TABLE outbox
    ADD COLUMN attempts    INT NOT NULL DEFAULT 0,
    ADD COLUMN last_error  TEXT,
    ADD COLUMN failed_at   TIMESTAMPTZ;

DROP INDEX IF EXISTS outbox_unpublished_idx;
CREATE INDEX outbox_unpublished_idx ON outbox (id)
    WHERE published_at IS NULL AND failed_at IS NULL;

-- Retention pruning (the relay deletes published rows and old processed-event ids).
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
