-- ConfigService: current values, append-only history, per-organization revisions,
-- schemas and idempotency records. Every table carries the organization and is
-- filtered by row-level security on app.org_id (set per transaction).

CREATE TABLE config.organizations (
    organization     text PRIMARY KEY,
    -- Rises by exactly one per committed change (a batch is one change).
    revision         bigint NOT NULL DEFAULT 0,
    -- History at or below this revision has been compacted away.
    compact_revision bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE config.entries (
    organization text NOT NULL,
    service      text NOT NULL,
    key          text NOT NULL,
    -- {"type": "int", "data": 5}: readable in psql, exact for int64.
    value        jsonb NOT NULL,
    -- Revision of the last change to this key (its etag).
    revision     bigint NOT NULL,
    updated_at   timestamptz NOT NULL,
    updated_by   text NOT NULL,
    PRIMARY KEY (organization, service, key)
);

CREATE TABLE config.history (
    organization text NOT NULL,
    revision     bigint NOT NULL,
    -- Position of the change inside its revision (a batch has several).
    seq          integer NOT NULL,
    service      text NOT NULL,
    key          text NOT NULL,
    change_type  text NOT NULL CHECK (change_type IN ('set', 'delete')),
    old_value    jsonb,
    new_value    jsonb,
    actor        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    request_id   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (organization, revision, seq)
);
CREATE INDEX history_key_idx ON config.history (organization, service, key, revision);

CREATE TABLE config.schemas (
    organization text NOT NULL,
    service      text NOT NULL,
    -- {"strict": bool, "keys": [{"key": ..., "type": ..., ...}]}
    schema       jsonb NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, service)
);

-- Retried writes (AIP-155): the first answer to a request id is the answer to all.
CREATE TABLE config.requests (
    organization text NOT NULL,
    request_id   text NOT NULL,
    method       text NOT NULL,
    fingerprint  text NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, request_id)
);
CREATE INDEX requests_created_idx ON config.requests (created_at);

-- Row-level security: a transaction sees only the organization in app.org_id. The
-- service runs its organization-scoped work as the role below (SET LOCAL ROLE), so the
-- policy holds even when it connects as a superuser or the table owner.
DO $$
BEGIN
    CREATE ROLE agentready_config NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another database may have created it already
END
$$;
GRANT USAGE ON SCHEMA config TO agentready_config;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA config TO agentready_config;

ALTER TABLE config.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE config.entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE config.history ENABLE ROW LEVEL SECURITY;
ALTER TABLE config.schemas ENABLE ROW LEVEL SECURITY;
ALTER TABLE config.requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_organization ON config.organizations
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON config.entries
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON config.history
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON config.schemas
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON config.requests
    USING (organization = current_setting('app.org_id', true));
