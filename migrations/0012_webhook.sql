-- Deliveries of the end-of-job webhook (`ifp serve --webhook-url`): one row per ended job the
-- server has tried to report. `sent_at` is set once the receiver answered 2xx; until then
-- `tries` counts the failed POSTs and `last_error` says why the last one failed.
create table webhook_delivery (
    job_id uuid primary key references job (id) on delete cascade,
    tries integer not null default 0 check (tries >= 0),
    last_error text,
    sent_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
