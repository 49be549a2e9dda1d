-- The miner's near-duplicate look-up, indexed (issue 16): it used to read every image for
-- each new one. Multi-index hashing of the 64-bit pHash: the hash is cut into four 16-bit
-- bands, each with its own index. Two hashes within t bits of each other differ in at most
-- floor(t/4) bits in some band (pigeonhole: the four bands' distances sum to t or less), so
-- the candidates are the rows whose band equals one of the new hash's band values within
-- that radius (17 values per band at the default t = 6); the exact Hamming and colour checks
-- run on those only (services/mining/store.py: near_phash, band_sql spells these same
-- expressions so the planner matches them).
-- INCLUDE (phash, image_id): the exact Hamming check runs on index entries (index-only
-- scans; ~280 entries per band at 1M images) and only the survivors' rows are read.
-- Expression indexes need no new columns that a writer could forget to fill: building them
-- is the backfill of the existing rows, and every insert keeps them current.
CREATE INDEX images_phash_band0_idx ON images (((phash >> 48) & 65535)) INCLUDE (phash, image_id);
CREATE INDEX images_phash_band1_idx ON images (((phash >> 32) & 65535)) INCLUDE (phash, image_id);
CREATE INDEX images_phash_band2_idx ON images (((phash >> 16) & 65535)) INCLUDE (phash, image_id);
CREATE INDEX images_phash_band3_idx ON images ((phash & 65535)) INCLUDE (phash, image_id);
