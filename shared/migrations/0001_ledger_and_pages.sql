-- The job ledger: the source of truth for every job's state.
CREATE TABLE jobs (
    id          uuid PRIMARY KEY,
    url         text        NOT NULL,
    render      text        NOT NULL CHECK (render IN ('http', 'browser')),
    formats     text[]      NOT NULL,
    status      text        NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts    integer     NOT NULL DEFAULT 0,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    fetch_ms    integer
);
-- Jobs by state, for stats and the metrics service.
CREATE INDEX jobs_status_idx ON jobs (status);

-- The page store: one row per successful job.
CREATE TABLE pages (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       uuid        NOT NULL UNIQUE REFERENCES jobs (id),
    url          text        NOT NULL,
    final_url    text,
    status_code  integer,
    headers      jsonb       NOT NULL DEFAULT '{}',
    title        text,
    text         text,
    markdown     text,
    links        jsonb,
    metadata     jsonb,
    html_br      bytea,
    content_hash bytea,
    render       text        NOT NULL,
    fetched_at   timestamptz NOT NULL
);
