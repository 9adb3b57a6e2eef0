-- The job platform: API tokens, jobs (the queue), their attempts, logged metrics and checkpoints.

create table api_token (
    id uuid primary key,
    -- The user the token belongs to: jobs are owned by this name.
    name text not null check (name <> ''),
    -- Hex SHA-256 of the token; the token itself is never stored.
    token_hash text not null unique,
    is_admin boolean not null default false,
    last_used_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table job (
    id uuid primary key,
    name text not null,
    owner text not null,
    status text not null default 'queued'
        check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority integer not null default 0,
    config jsonb not null,
    attempt integer not null default 0 check (attempt >= 0),
    max_attempts integer not null default 3 check (max_attempts >= 1),
    worker_id text,
    lease_expires_at timestamptz,
    cancel_requested boolean not null default false,
    step bigint not null default 0,
    total_steps bigint not null check (total_steps > 0),
    loss double precision,
    error text,
    started_at timestamptz,
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- A running job always has a worker and a lease; no other status has one.
    check ((status = 'running') = (worker_id is not null and lease_expires_at is not null))
);

-- The claim order (priority, then age) over queued jobs only.
create index job_queue_idx on job (priority desc, created_at, id) where status = 'queued';
-- The rescuer's scan of expired leases.
create index job_lease_idx on job (lease_expires_at) where status = 'running';
create index job_owner_created_idx on job (owner, created_at desc);
create index job_created_idx on job (created_at desc);

create table attempt (
    job_id uuid not null references job (id) on delete cascade,
    attempt integer not null,
    worker_id text not null,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    -- null while it runs; 'lost' when its lease expired (the worker died or was cut off).
    outcome text check (outcome in ('succeeded', 'failed', 'cancelled', 'lost', 'interrupted')),
    error text,
    resumed_from_step bigint,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (job_id, attempt)
);

create table metric (
    job_id uuid not null references job (id) on delete cascade,
    step bigint not null,
    attempt integer not null,
    loss double precision not null,
    lr double precision not null,
    grad_norm double precision not null,
    images_per_sec double precision not null,
    created_at timestamptz not null default now(),
    -- A resumed attempt repeats the steps after its checkpoint: the newest value wins.
    primary key (job_id, step)
);

-- `GET /metrics` counts the steps logged in the last minute.
create index metric_created_idx on metric (created_at);

create table checkpoint (
    job_id uuid not null references job (id) on delete cascade,
    -- The file name (`model-000200.safetensors`), unique within a job.
    name text not null,
    kind text not null check (kind in ('model', 'state', 'sample')),
    attempt integer not null,
    step bigint not null,
    bytes bigint not null,
    sha256 text not null,
    -- Relative to the artifact root.
    path text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (job_id, name)
);

create index checkpoint_job_step_idx on checkpoint (job_id, step);
