-- A job's estimated peak memory in bytes, from admission control at submission (null for jobs
-- queued before it was recorded). A worker claims only jobs that fit its memory, so a job
-- submitted while no worker was live, or too big for some workers, waits for one it fits.
alter table job add column memory_need bigint check (memory_need >= 0);
