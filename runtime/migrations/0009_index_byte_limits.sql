-- Issue 14: a btree index row must stay under ~2.7 kB, so text that producers control never
-- goes into one raw. A 2,019-character (6,019-byte) page URL once failed the insert with
-- ProgramLimitExceeded and wedged mining. Identity is the hash (pages.url_hash) or an md5
-- expression index; lookups by the full text use a hash index, which has no size limit.

ALTER TABLE pages DROP CONSTRAINT IF EXISTS pages_url_key;
CREATE INDEX IF NOT EXISTS pages_url_lookup_idx ON pages USING hash (url);

ALTER TABLE image_rejections DROP CONSTRAINT IF EXISTS image_rejections_page_id_src_url_key;
CREATE UNIQUE INDEX IF NOT EXISTS image_rejections_page_src_key
    ON image_rejections (page_id, md5(src_url));

ALTER TABLE triples
    DROP CONSTRAINT IF EXISTS triples_pair_id_writer_writer_version_instruction_key;
CREATE UNIQUE INDEX IF NOT EXISTS triples_pair_writer_instruction_key
    ON triples (pair_id, writer, writer_version, md5(instruction));
