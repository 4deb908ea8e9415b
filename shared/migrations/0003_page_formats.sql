-- What each page was read for: the formats of the job that fetched it. From here on a page's HTML body is kept
-- only when html or raw_html was asked for (the body is most of a page's bytes, and compressing it most of the
-- scraper's own work); its content hash is kept always. The gateway answers a max_age_s job from a stored page
-- only when that page was read for every format the job asks for. Rows stored before have NULL here: they always
-- kept their body, and hold whichever of text, markdown, links and metadata their job asked for.
ALTER TABLE pages ADD COLUMN formats text[];
