-- A coarse colour signature beside the (greyscale) perceptual hash: 8x8 RGB cell means on a
-- white background, 192 bytes. pHash alone calls colour variants (skin tones, recoloured
-- clip art) near-duplicates; near-duplicate now needs both to match.
ALTER TABLE images ADD COLUMN colour_sig BYTEA;
