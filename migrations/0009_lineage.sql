-- Lineage: the job a job was derived from (cloned from, or fine-tuned from its encoder). A
-- parent's page lists its children; deleting a parent keeps the children.
alter table job add column parent_id uuid references job (id) on delete set null;
create index job_parent_id on job (parent_id) where parent_id is not null;
