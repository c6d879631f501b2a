-- One round trip to open a write: switch to the tenant role and organization, lock the
-- organization's revision row (creating it on first use), then - in a new statement,
-- so with a snapshot taken after the lock - read the entries and schemas the write
-- needs. Written as a function only to save round trips; the rules stay in Python.
CREATE FUNCTION config.begin_write(
    p_organization text,
    p_services text[],
    p_keys text[],
    p_schema_services text[]
) RETURNS TABLE (revision bigint, compact_revision bigint, entries jsonb, schemas jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_revision bigint;
    v_compact bigint;
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    SELECT o.revision, o.compact_revision INTO v_revision, v_compact
        FROM config.organizations o WHERE o.organization = p_organization FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO config.organizations (organization) VALUES (p_organization)
            ON CONFLICT (organization) DO NOTHING;
        SELECT o.revision, o.compact_revision INTO v_revision, v_compact
            FROM config.organizations o WHERE o.organization = p_organization FOR UPDATE;
    END IF;
    RETURN QUERY SELECT
        v_revision,
        v_compact,
        (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'service', e.service, 'key', e.key, 'value', e.value,
                    'revision', e.revision, 'updated_at', e.updated_at,
                    'updated_by', e.updated_by)), '[]'::jsonb)
           FROM config.entries e
           JOIN unnest(p_services, p_keys) AS k(service, key)
             ON e.service = k.service AND e.key = k.key
          WHERE e.organization = p_organization),
        (SELECT coalesce(jsonb_object_agg(s.service, s.schema), '{}'::jsonb)
           FROM config.schemas s
          WHERE s.organization = p_organization AND s.service = ANY(p_schema_services));
END
$$;
GRANT EXECUTE ON FUNCTION config.begin_write(text, text[], text[], text[]) TO agentready_config;
