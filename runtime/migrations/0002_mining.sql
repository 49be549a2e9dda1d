-- Mining (issue 3): who mined a page, responses archived from WARC files, lookup indexes.

ALTER TABLE pages ADD COLUMN mined_by TEXT;

-- Responses taken from a WARC (HTML and images), bytes in the blob store: the miner reads
-- these before touching the network, so an archive can be mined offline and replayed.
CREATE TABLE archived_responses (
    url_hash       TEXT PRIMARY KEY,                -- sha256 of the normalised URL
    url            TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    blob_uri       TEXT NOT NULL,
    size_bytes     INT NOT NULL,
    archive        TEXT NOT NULL,                   -- the WARC file's name
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX page_images_image_idx ON page_images (image_id);
CREATE INDEX pairs_page_idx ON pairs (page_id);
CREATE INDEX image_rejections_page_idx ON image_rejections (page_id);
