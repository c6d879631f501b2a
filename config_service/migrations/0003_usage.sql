-- Organization usage, kept in the organization's row by every write (under the row
-- lock the write already holds), so a limit is checked in the write's transaction and
-- concurrent writers cannot overshoot it together.

-- What an entry counts toward its organization's stored size: its names and its value
-- as PostgreSQL prints it.
CREATE FUNCTION config.entry_bytes(p_service text, p_key text, p_value jsonb)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT octet_length(p_service)::bigint + octet_length(p_key) + octet_length(p_value::text)
$$;
GRANT EXECUTE ON FUNCTION config.entry_bytes(text, text, jsonb) TO agentready_config;

ALTER TABLE config.organizations
    ADD COLUMN key_count    bigint NOT NULL DEFAULT 0,
    ADD COLUMN stored_bytes bigint NOT NULL DEFAULT 0;

UPDATE config.organizations o
   SET key_count = u.keys, stored_bytes = u.bytes
  FROM (SELECT organization, count(*) AS keys,
               sum(config.entry_bytes(service, key, value)) AS bytes
          FROM config.entries GROUP BY organization) u
 WHERE o.organization = u.organization;
