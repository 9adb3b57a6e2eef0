-- Job kinds: IFP pre-training, or a comparison ("does IFP help here?": pre-training, then the
-- same fine-tuning from the IFP encoder and from scratch, both scored on the same test set).
alter table job add column kind text not null default 'pretrain'
    check (kind in ('pretrain', 'compare'));

-- A comparison's results (report.json, the CSVs, showcase PNGs) are listed like checkpoints.
alter table checkpoint drop constraint checkpoint_kind_check;
alter table checkpoint add constraint checkpoint_kind_check
    check (kind in ('model', 'state', 'sample', 'report'));
