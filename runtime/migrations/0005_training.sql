-- Training service (issue 4): run bookkeeping for the queue, restart recovery and promotion.

ALTER TABLE training_runs
    ADD COLUMN IF NOT EXISTS mode          TEXT,
    ADD COLUMN IF NOT EXISTS attempts      INT NOT NULL DEFAULT 0,   -- starts (1 + resumes)
    ADD COLUMN IF NOT EXISTS worker        TEXT,                     -- host:pid that ran it
    ADD COLUMN IF NOT EXISTS started_at    TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS finished_at   TIMESTAMPTZ;

-- The worker takes the oldest queued run.
CREATE INDEX IF NOT EXISTS training_runs_queue_idx ON training_runs (status, created_at);

ALTER TABLE model_versions
    ADD COLUMN IF NOT EXISTS embed_dim     INT,
    ADD COLUMN IF NOT EXISTS promoted_at   TIMESTAMPTZ;

-- At most one promoted version at any time (PromoteModel demotes the previous one).
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_promoted
    ON model_versions ((true)) WHERE status = 'promoted';
