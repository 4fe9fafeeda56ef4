-- OpenID Connect nonces (issue 18): the API issues one before each sign-in through the
-- identity provider, the provider puts it in the ID token, and the sign-in spends it, so
-- an ID token is good for one sign-in only. Stored as SHA-256, in the database so that any
-- API replica can spend a nonce another issued; expired rows are removed as new ones come.
CREATE TABLE oidc_nonces (
    nonce_sha256 bytea PRIMARY KEY CHECK (length(nonce_sha256) = 32),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX oidc_nonces_by_expiry ON oidc_nonces (expires_at);
