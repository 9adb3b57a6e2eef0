-- Who uploaded which noise image. Files stay stored once by content under `uploads/`, but a
-- user may name in a job only the uploads they made themselves (admins may name any), so one
-- user's upload is neither usable by nor confirmable to another.
create table upload (
    -- The reference a config uses: `uploads/<sha256>.<png|jpg>`.
    path text not null,
    owner text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (path, owner)
);

-- Uploads that jobs already use stay usable by those jobs' owners.
insert into upload (path, owner)
select distinct p, owner from (
    select config #>> '{DATA,NOISE_IMAGE}' as p, owner from job where kind = 'pretrain'
    union all
    select config #>> '{PRETRAIN,DATA,NOISE_IMAGE}', owner from job where kind = 'compare'
) used
where p like 'uploads/%'
on conflict do nothing;
