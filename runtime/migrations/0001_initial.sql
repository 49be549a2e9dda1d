-- MagicLens schema v1. Every row that moves through the pipeline carries a `status`,
-- so Postgres alone says what work remains (reconciliation re-derives events from it).

CREATE TABLE pages (
    page_id        BIGSERIAL PRIMARY KEY,
    url            TEXT NOT NULL UNIQUE,
    url_hash       TEXT NOT NULL UNIQUE,          -- sha256 of the normalised URL
    domain         TEXT NOT NULL,
    title          TEXT,
    source         TEXT NOT NULL DEFAULT 'web',   -- web | warc | upload | corpus:<name>
    split          TEXT NOT NULL DEFAULT 'train', -- train | heldout
    status         TEXT NOT NULL DEFAULT 'discovered'
                   CHECK (status IN ('discovered', 'fetching', 'mined', 'failed', 'skipped')),
    status_reason  TEXT,
    http_status    INT,
    attempts       INT NOT NULL DEFAULT 0,
    discovered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    mined_at       TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX pages_status_idx ON pages (status);

CREATE TABLE images (
    image_id       BIGSERIAL PRIMARY KEY,
    content_hash   TEXT NOT NULL UNIQUE,          -- sha256 of the original bytes
    phash          BIGINT,                        -- 64-bit perceptual hash (signed)
    source_url     TEXT NOT NULL,
    first_page_id  BIGINT REFERENCES pages(page_id),
    blob_uri       TEXT,
    mime_type      TEXT,
    width          INT,
    height         INT,
    alt_text       TEXT,
    title_text     TEXT,
    caption        TEXT,
    context_text   TEXT,
    page_title     TEXT,
    status         TEXT NOT NULL DEFAULT 'mined'
                   CHECK (status IN ('mined', 'annotated', 'rejected', 'deleted')),
    status_reason  TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX images_status_idx ON images (status);
CREATE INDEX images_phash_idx ON images (phash);

-- Every occurrence of an image on a page, with its context there (an image may be on many pages).
CREATE TABLE page_images (
    page_id        BIGINT NOT NULL REFERENCES pages(page_id),
    image_id       BIGINT NOT NULL REFERENCES images(image_id),
    position       INT NOT NULL,
    src_url        TEXT NOT NULL,
    alt_text       TEXT,
    title_text     TEXT,
    caption        TEXT,
    context_text   TEXT,
    PRIMARY KEY (page_id, image_id)
);

-- Candidates the miner rejected, with the reason (nothing is silently dropped).
CREATE TABLE image_rejections (
    rejection_id   BIGSERIAL PRIMARY KEY,
    page_id        BIGINT REFERENCES pages(page_id),
    src_url        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (page_id, src_url)
);

CREATE TABLE image_annotations (
    image_id       BIGINT PRIMARY KEY REFERENCES images(image_id),
    labels         JSONB NOT NULL DEFAULT '[]',   -- zero-shot labels with scores
    ocr_text       TEXT,
    backbone       TEXT,
    embedding      BYTEA,                          -- float32 little-endian, backbone space
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE pairs (
    pair_id          BIGSERIAL PRIMARY KEY,
    page_id          BIGINT NOT NULL REFERENCES pages(page_id),
    query_image_id   BIGINT NOT NULL REFERENCES images(image_id),
    target_image_id  BIGINT NOT NULL REFERENCES images(image_id),
    status           TEXT NOT NULL DEFAULT 'mined'
                     CHECK (status IN ('mined', 'kept', 'dropped', 'tripled', 'failed')),
    status_reason    TEXT,
    similarity       REAL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (page_id, query_image_id, target_image_id),
    CHECK (query_image_id <> target_image_id)
);
CREATE INDEX pairs_status_idx ON pairs (status);

CREATE TABLE triples (
    triple_id        BIGSERIAL PRIMARY KEY,
    pair_id          BIGINT NOT NULL REFERENCES pairs(pair_id),
    query_image_id   BIGINT NOT NULL REFERENCES images(image_id),
    target_image_id  BIGINT NOT NULL REFERENCES images(image_id),
    instruction      TEXT NOT NULL,
    writer           TEXT NOT NULL,               -- metadata | llm
    writer_version   TEXT NOT NULL,
    writer_model     TEXT,
    prompt_version   TEXT,
    relation         TEXT,
    scores           JSONB NOT NULL DEFAULT '{}',
    split            TEXT NOT NULL DEFAULT 'train',
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (pair_id, writer, writer_version, instruction)
);
CREATE INDEX triples_status_idx ON triples (status);

CREATE TABLE model_versions (
    model_version    TEXT PRIMARY KEY,
    config_name      TEXT NOT NULL,
    config           JSONB NOT NULL DEFAULT '{}',
    checkpoint_uri   TEXT,
    metrics          JSONB NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL DEFAULT 'training'
                     CHECK (status IN ('training', 'trained', 'published', 'promoted',
                                       'failed', 'retired')),
    status_reason    TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE training_runs (
    run_id           TEXT PRIMARY KEY,
    model_version    TEXT REFERENCES model_versions(model_version),
    config_name      TEXT NOT NULL,
    params           JSONB NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    status_reason    TEXT,
    step             INT NOT NULL DEFAULT 0,
    total_steps      INT,
    last_loss        REAL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE image_embeddings (
    image_id         BIGINT NOT NULL REFERENCES images(image_id),
    model_version    TEXT NOT NULL REFERENCES model_versions(model_version),
    embedding        BYTEA NOT NULL,               -- float32 little-endian, unit norm
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model_version)
);

CREATE TABLE index_snapshots (
    snapshot_id      BIGSERIAL PRIMARY KEY,
    shard            INT NOT NULL,
    model_version    TEXT NOT NULL,
    uri              TEXT NOT NULL,
    num_vectors      INT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'building'
                     CHECK (status IN ('building', 'ready', 'serving', 'retired')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Transactional outbox: a state change and its event commit in one transaction;
-- the relay publishes rows in id order and stamps published_at (at-least-once).
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    event_id         UUID NOT NULL UNIQUE,
    topic            TEXT NOT NULL,
    msg_key          TEXT NOT NULL,
    msg_type         TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at     TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

-- Idempotent consumers: an event's effect and this row commit together.
CREATE TABLE processed_events (
    consumer         TEXT NOT NULL,
    event_id         UUID NOT NULL,
    processed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events a consumer could not apply after retries (or could not decode): kept, not lost.
CREATE TABLE dead_letters (
    consumer         TEXT NOT NULL,
    event_id         UUID NOT NULL,
    topic            TEXT NOT NULL,
    msg_key          TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    error            TEXT NOT NULL,
    attempts         INT NOT NULL DEFAULT 1,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
