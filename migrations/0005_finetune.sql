-- A third job kind: one fine-tuning run, its encoder from a pre-training job or from scratch.
alter table job drop constraint job_kind_check;
alter table job add constraint job_kind_check
    check (kind in ('pretrain', 'compare', 'finetune'));
