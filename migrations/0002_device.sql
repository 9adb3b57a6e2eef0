-- GPU jobs (issue 6): the kind of worker a job asks for, and the device each attempt ran on.

-- `TRAIN.DEVICE` of the job's config: 'any' worker, only 'cpu' ones, or only 'cuda' ones.
-- Jobs queued before this migration could run anywhere.
alter table job add column device_class text not null default 'any'
    check (device_class in ('any', 'cpu', 'cuda'));

-- What the claiming worker ran on: e.g. 'NVIDIA H100 80GB HBM3' and its memory in bytes
-- (null when unknown, e.g. rows from before this migration).
alter table attempt add column device_name text;
alter table attempt add column device_memory bigint check (device_memory >= 0);
