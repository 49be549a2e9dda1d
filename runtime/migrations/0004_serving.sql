-- Serving (issue 6): which model version serves, and when each image became searchable.

-- The promoted version the embedding server, the embedding worker and the search shards
-- follow (one row per deployment name; 'default' for the single local deployment).
CREATE TABLE serving_models (
    name             TEXT PRIMARY KEY,
    model_version    TEXT NOT NULL REFERENCES model_versions(model_version),
    checkpoint_uri   TEXT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Index freshness: page discovery -> searchable in a shard, per image and model version.
CREATE TABLE index_freshness (
    image_id            BIGINT NOT NULL,
    model_version       TEXT NOT NULL,
    shard               INT NOT NULL,
    page_discovered_at  TIMESTAMPTZ,
    searchable_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model_version)
);
CREATE INDEX index_freshness_searchable_idx ON index_freshness (searchable_at);

-- Shards load their partition of one version; the reconciler looks for missing embeddings.
CREATE INDEX image_embeddings_version_idx ON image_embeddings (model_version, image_id);
