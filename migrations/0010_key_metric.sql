-- A finished job's key result, for the jobs list: a fine-tuning job's best validation PSNR
-- (dB), a comparison's paired test-PSNR difference IFP - scratch (dB). Pre-training jobs show
-- their final loss (`loss`) instead. Null until the run's result files are listed.
alter table job add column key_metric double precision;
