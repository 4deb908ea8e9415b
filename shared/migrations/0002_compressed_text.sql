-- Page text and markdown arrive compressed from the scrapers (zstd, see shared/codecs.py), which scale out,
-- instead of being compressed by PostgreSQL (pglz, the only TOAST compression the embedded build has), which does
-- not: measured, pglz on page text was about half of PostgreSQL's CPU per stored page. Already compressed, so
-- EXTERNAL (no second attempt). Rows stored before this migration keep their text in the old columns; reads use
-- whichever is set. Bodies are zstd from now on too (older ones stay brotli), hence the codec-neutral name.
ALTER TABLE bodies RENAME COLUMN html_br TO html_packed;
ALTER TABLE pages ADD COLUMN text_packed bytea, ADD COLUMN markdown_packed bytea;
ALTER TABLE pages ALTER COLUMN text_packed SET STORAGE EXTERNAL, ALTER COLUMN markdown_packed SET STORAGE EXTERNAL;
