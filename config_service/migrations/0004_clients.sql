-- Watching clients as they last reported (ReportConfigStatus): which revision each
-- has applied or refused, and when it was last heard from. Kept in PostgreSQL so that
-- every replica lists every client; rows not heard from are pruned by maintenance.
CREATE TABLE config.clients (
    organization      text NOT NULL,
    client_id         text NOT NULL,
    labels            jsonb NOT NULL DEFAULT '{}'::jsonb,
    applied_revision  bigint NOT NULL DEFAULT 0,
    rejected_revision bigint NOT NULL DEFAULT 0,
    rejection_reason  text NOT NULL DEFAULT '',
    rejected_at       timestamptz,
    last_seen         timestamptz NOT NULL,
    PRIMARY KEY (organization, client_id)
);
CREATE INDEX clients_last_seen_idx ON config.clients (last_seen);

GRANT SELECT, INSERT, UPDATE, DELETE ON config.clients TO agentready_config;
ALTER TABLE config.clients ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_organization ON config.clients
    USING (organization = current_setting('app.org_id', true));
