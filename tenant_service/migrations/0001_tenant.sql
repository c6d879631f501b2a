-- TenantService: users, refresh tokens, organizations and their members, projects,
-- notes and service-account keys, revocations and idempotency records.
--
-- Tables that belong to one organization carry it in `organization` and are filtered
-- by row-level security on app.org_id (set per transaction, as the NOLOGIN role below).
-- Users, refresh tokens and global request records belong to no organization.

CREATE TABLE tenant.users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,          -- normalised: trimmed, lower case
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,                 -- argon2id, PHC string
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every token pair minted: the refresh token (only its hash) and the access token it
-- came with. Rotation marks a row used; reuse of a used row revokes its family.
CREATE TABLE tenant.refresh_tokens (
    id                uuid PRIMARY KEY,
    family            uuid NOT NULL,             -- the Login that started the chain
    user_id           uuid NOT NULL REFERENCES tenant.users (id),
    organization      text,                      -- scope of the access token, if any
    secret_hash       bytea NOT NULL,            -- SHA-256 of the secret part
    expires_at        timestamptz NOT NULL,
    access_jti        uuid NOT NULL,
    access_expires_at timestamptz NOT NULL,
    used_at           timestamptz,
    revoked_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family_idx ON tenant.refresh_tokens (family);
CREATE INDEX refresh_tokens_member_idx
    ON tenant.refresh_tokens (organization, user_id, access_expires_at);
CREATE INDEX refresh_tokens_expiry_idx ON tenant.refresh_tokens (expires_at);

CREATE TABLE tenant.organizations (
    organization    text PRIMARY KEY,            -- the slug; never reused
    uid             uuid NOT NULL UNIQUE,
    display_name    text NOT NULL,
    state           text NOT NULL
        CHECK (state IN ('PROVISIONING', 'ACTIVE', 'FAILED', 'DELETING', 'DELETED')),
    state_reason    text NOT NULL DEFAULT '',
    labels          jsonb NOT NULL DEFAULT '{}',
    version         bigint NOT NULL DEFAULT 1,   -- the etag
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    -- Saga bookkeeping: consecutive failed attempts and when to try again.
    failures        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX organizations_due_idx ON tenant.organizations (next_attempt_at)
    WHERE state IN ('PROVISIONING', 'FAILED', 'DELETING');

CREATE TABLE tenant.members (
    organization text NOT NULL REFERENCES tenant.organizations (organization),
    user_id      uuid NOT NULL REFERENCES tenant.users (id),
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, user_id)
);
CREATE INDEX members_user_idx ON tenant.members (user_id, organization);

CREATE TABLE tenant.projects (
    organization text NOT NULL REFERENCES tenant.organizations (organization),
    id           text NOT NULL,
    display_name text NOT NULL,
    description  text NOT NULL DEFAULT '',
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, id)
);

CREATE TABLE tenant.notes (
    organization   text NOT NULL,
    project        text NOT NULL,
    id             uuid NOT NULL,
    title          text NOT NULL,
    body           text NOT NULL DEFAULT '',
    author_user_id text NOT NULL,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, id),
    FOREIGN KEY (organization, project)
        REFERENCES tenant.projects (organization, id) ON DELETE CASCADE
);
CREATE INDEX notes_created_idx ON tenant.notes (organization, created_at DESC, id DESC);
CREATE INDEX notes_project_idx
    ON tenant.notes (organization, project, created_at DESC, id DESC);

CREATE TABLE tenant.service_account_keys (
    organization text NOT NULL REFERENCES tenant.organizations (organization),
    id           uuid NOT NULL,                  -- also the token's jti; subject sa:<id>
    display_name text NOT NULL DEFAULT '',
    scopes       text[] NOT NULL,
    token_hash   bytea NOT NULL,                 -- SHA-256 of the token; never the token
    created_by   text NOT NULL,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, id)
);

-- Retried writes (AIP-155) inside an organization: the first answer is every answer.
CREATE TABLE tenant.requests (
    organization text NOT NULL,
    request_id   text NOT NULL,
    method       text NOT NULL,
    fingerprint  text NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization, request_id)
);
CREATE INDEX requests_created_idx ON tenant.requests (created_at);

-- Retried writes outside any organization (CreateUser, CreateOrganization); the
-- fingerprint covers the caller, so another caller's id is never replayed to it.
CREATE TABLE tenant.global_requests (
    request_id  text PRIMARY KEY,
    method      text NOT NULL,
    fingerprint text NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX global_requests_created_idx ON tenant.global_requests (created_at);

-- Revocations in force (the source of truth; Redis carries them to every service).
CREATE TABLE tenant.revocations (
    key        text PRIMARY KEY,                 -- jti:<token id> or org:<slug>
    until      timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Row-level security: an organization-scoped transaction sees only the organization in
-- app.org_id. It runs as the role below (set_config('role', ..., true)), which owns
-- nothing and has no BYPASSRLS, so the policies hold even when the service connects as
-- a superuser. Work that spans organizations (listing a user's organizations, the
-- saga loop's scan, sign-in) runs as the connecting role and says so in the code.
DO $$
BEGIN
    CREATE ROLE agentready_tenant NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another database may have created it already
END
$$;
GRANT USAGE ON SCHEMA tenant TO agentready_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tenant TO agentready_tenant;

ALTER TABLE tenant.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant.notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant.service_account_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant.requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_organization ON tenant.organizations
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON tenant.members
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON tenant.projects
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON tenant.notes
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON tenant.service_account_keys
    USING (organization = current_setting('app.org_id', true));
CREATE POLICY by_organization ON tenant.requests
    USING (organization = current_setting('app.org_id', true));
