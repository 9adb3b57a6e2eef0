-- What a training process used while it ran, sampled by its worker every few seconds: the
-- process's CPU use (percent of one core, so 200 = two cores busy) over the interval before
-- the sample, and its resident memory. Only attempts that run in their own process are sampled.
create table usage_sample (
    job_id uuid not null references job (id) on delete cascade,
    attempt integer not null,
    cpu_percent double precision not null,
    rss_bytes bigint not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index usage_sample_job on usage_sample (job_id, attempt, created_at);
