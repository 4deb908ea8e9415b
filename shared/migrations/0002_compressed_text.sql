-- Page text and markdown arrive brotli-compressed from the scrapers, which scale out, instead of being compressed
-- by PostgreSQL (pglz, the only TOAST compression the embedded build has), which does not: measured, pglz on page
-- text was about half of PostgreSQL's CPU per stored page. Already compressed, so EXTERNAL (no second attempt).
-- Rows stored before this migration keep their text in the old columns; reads use whichever is set.
ALTER TABLE pages ADD COLUMN text_br bytea, ADD COLUMN markdown_br bytea;
ALTER TABLE pages ALTER COLUMN text_br SET STORAGE EXTERNAL, ALTER COLUMN markdown_br SET STORAGE EXTERNAL;
