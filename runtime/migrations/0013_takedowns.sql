-- Takedowns (issue 17): content removed on request never comes back. A page can now be
-- 'deleted' (taken down: never mined again), and every takedown is recorded: an image, a
-- page (its URL) or a domain, whose future pages the miner refuses.
ALTER TABLE pages DROP CONSTRAINT IF EXISTS pages_status_check;
ALTER TABLE pages ADD CONSTRAINT pages_status_check
    CHECK (status IN ('discovered', 'fetching', 'mined', 'failed', 'skipped', 'deleted'));

CREATE TABLE takedowns (
    takedown_id    BIGSERIAL PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('image', 'page', 'domain')),
    target         TEXT NOT NULL,                 -- the image id, the page URL or the host
    reason         TEXT NOT NULL DEFAULT '',
    images_deleted BIGINT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX takedowns_target_idx ON takedowns (kind, target);
-- Deleted images whose bytes are still stored: the purge's work list.
CREATE INDEX images_deleted_blobs_idx ON images (image_id)
    WHERE status = 'deleted' AND blob_uri IS NOT NULL;
