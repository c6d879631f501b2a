-- The owners an organization's environment grants (its RoleBinding) follow its members:
-- every change to the set of owners bumps owners_version; the saga applies the owners
-- to the Provisioner and records the version it applied in owners_applied. An ACTIVE
-- organization with owners_version > owners_applied has a saga step due.
ALTER TABLE tenant.organizations
    ADD COLUMN owners_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN owners_applied bigint NOT NULL DEFAULT 0;
