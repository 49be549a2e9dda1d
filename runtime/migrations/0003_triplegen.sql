-- Triple generation (services/triplegen). Annotations keep the text they were made from, so
-- writers work from one row per image; pairs remember which writer a regeneration asked for;
-- LLM answers are cached by prompt hash so a rerun (or a crash replay) costs no second call.

ALTER TABLE image_annotations
    ADD COLUMN IF NOT EXISTS alt_text          TEXT,
    ADD COLUMN IF NOT EXISTS caption           TEXT,
    ADD COLUMN IF NOT EXISTS context_text      TEXT,
    ADD COLUMN IF NOT EXISTS page_title        TEXT,
    ADD COLUMN IF NOT EXISTS labels_text       TEXT,     -- zero-shot labels as caption-like text
    ADD COLUMN IF NOT EXISTS annotator_version TEXT,
    ADD COLUMN IF NOT EXISTS embedding_dim     INT,
    ADD COLUMN IF NOT EXISTS updated_at        TIMESTAMPTZ NOT NULL DEFAULT now();

ALTER TABLE pairs
    ADD COLUMN IF NOT EXISTS filter_version    TEXT,
    ADD COLUMN IF NOT EXISTS requested_writer  TEXT;     -- set by RegenerateTriples

CREATE INDEX IF NOT EXISTS pairs_page_idx ON pairs (page_id);
CREATE INDEX IF NOT EXISTS triples_pair_idx ON triples (pair_id);
CREATE INDEX IF NOT EXISTS triples_writer_version_idx ON triples (writer, writer_version);

CREATE TABLE IF NOT EXISTS llm_cache (
    prompt_hash      TEXT PRIMARY KEY,                  -- sha256 of model + prompt
    model            TEXT NOT NULL,
    prompt_version   TEXT NOT NULL,
    response         TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
