-- Browser sessions: signing in with an API token sets a cookie whose SHA-256 is the id here.
-- A session lives only as long as its token: revoking the token ends it.

create table session (
    -- Hex SHA-256 of the cookie value; the cookie itself is never stored.
    id text primary key,
    -- The token the user signed in with (hex SHA-256, as in api_token or the admin token).
    token_hash text not null,
    name text not null,
    is_admin boolean not null,
    -- The per-session anti-forgery token every page form carries.
    csrf text not null,
    expires_at timestamptz not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index session_expires_idx on session (expires_at);
