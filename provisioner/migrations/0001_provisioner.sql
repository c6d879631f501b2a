-- ProvisionerService: the desired spec and recorded status of each tenant environment,
-- its quota history and idempotency records. Every table carries the organization and
-- is filtered by row-level security on app.org_id (set per transaction).

CREATE TABLE provisioner.environments (
    organization        text PRIMARY KEY,
    -- Desired spec.
    owners              text[] NOT NULL,
    quota               jsonb NOT NULL,              -- {"cpu": "10", "memory": "20Gi", "storage": "10Gi"}
    labels              jsonb NOT NULL DEFAULT '{}', -- extra namespace labels
    generation          bigint NOT NULL DEFAULT 1,   -- rises on every spec change
    -- Status.
    state               text NOT NULL
        CHECK (state IN ('PROVISIONING', 'READY', 'FAILED', 'DELETING', 'DELETED')),
    backend             text NOT NULL CHECK (backend IN ('kubernetes', 'gitops')),
    observed_generation bigint NOT NULL DEFAULT 0,   -- last generation applied successfully
    conditions          jsonb NOT NULL DEFAULT '[]',
    observed            jsonb NOT NULL DEFAULT '{}', -- namespace phase, quota hard and used
    last_error          text NOT NULL DEFAULT '',
    -- Deprovisioning saga progress: '' → 'revoked' → 'deleting' (then DELETED).
    deletion_progress   text NOT NULL DEFAULT ''
        CHECK (deletion_progress IN ('', 'revoked', 'deleting')),
    -- Reconciliation bookkeeping.
    failures            integer NOT NULL DEFAULT 0,  -- consecutive failed reconciles
    next_reconcile_at   timestamptz NOT NULL DEFAULT now(),
    -- Rises on every change of spec or status: the etag.
    version             bigint NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    reconciled_at       timestamptz
);
CREATE INDEX environments_due_idx ON provisioner.environments (next_reconcile_at)
    WHERE state <> 'DELETED';
CREATE INDEX environments_state_idx ON provisioner.environments (state, organization);

-- Every quota change, the initial quota included; append-only.
CREATE TABLE provisioner.quota_history (
    organization text NOT NULL,
    seq          bigint NOT NULL,                    -- 1, 2, ... per organization
    old_quota    jsonb,                              -- NULL for the initial quota
    new_quota    jsonb NOT NULL,
    actor        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    request_id   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, seq)
);

-- Retried writes (AIP-155): a request id acts once.
CREATE TABLE provisioner.requests (
    organization text NOT NULL,
    request_id   text NOT NULL,
    method       text NOT NULL,
    fingerprint  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, request_id)
);
CREATE INDEX requests_created_idx ON provisioner.requests (created_at);

-- Row-level security: a transaction sees only the organization in app.org_id. The
-- service runs its organization-scoped work as the role below (SET LOCAL ROLE), so the
-- policy holds even when it connects as a superuser or the table owner. Work that spans
-- organizations (listing, the reconcile loop's scan) runs as the connecting role.
DO $$
BEGIN
    CREATE ROLE agentready_provisioner NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another database may have created it already
END
$$;
GRANT USAGE ON SCHEMA provisioner TO agentready_provisioner;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA provisioner TO agentready_provisioner;

ALTER TABLE provisioner.environments ENABLE ROW LEVEL SECURITY;
ALTER TABLE provisioner.quota_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE provisioner.requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_organization ON provisioner.environments
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON provisioner.quota_history
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON provisioner.requests
    USING (organization = current_setting('app.org_id', true));
