-- API tokens can expire and be revoked (`ifp token create --expires-in`, `ifp token revoke`).
-- A token is valid while `revoked_at` is null and `expires_at` is null or in the future; the
-- browser sessions opened with it end with it.
alter table api_token
    add column expires_at timestamptz,
    add column revoked_at timestamptz;
