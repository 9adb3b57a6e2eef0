-- The GPU of an attempt that trains on one, sampled with its CPU and memory: the device's
-- utilisation (percent of the driver's last sample period with a kernel running) and the
-- device memory in use. Null for attempts on the CPU, and where the NVIDIA driver's management
-- library cannot be read.
alter table usage_sample add column gpu_percent double precision;
alter table usage_sample add column gpu_memory_bytes bigint;
