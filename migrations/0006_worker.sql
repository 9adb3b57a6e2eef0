-- Workers say what they have (issue 16, admission control): a submission whose estimated peak
-- memory exceeds every live worker of its device class is refused instead of queued to crash.
-- `updated_at` is when the worker last said it is alive; rows of long-gone workers are ignored
-- (and replaced when a worker of the same id returns).
create table worker (
    id text primary key,
    device_class text not null check (device_class in ('cpu', 'cuda')),
    device_name text,
    memory_bytes bigint check (memory_bytes >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
