-- What a live image is, defined once: in the pool (neither rejected nor deleted) and with its
-- bytes in the blob store. The embedding worker embeds exactly these, the search shards index
-- them, a query by pool id and the gateway's picker draw from them, and training exports
-- triples between them. The rule used to be spelled out in each of those places, and two of
-- them left out the blob condition.
-- `*` is expanded when the view is created: a later migration that adds a column to images
-- which readers need through this view must CREATE OR REPLACE it (new columns go last).
CREATE VIEW live_images AS
    SELECT * FROM images
    WHERE status NOT IN ('rejected', 'deleted') AND blob_uri IS NOT NULL;
