-- A write's request id in the write's own statements (AIP-155), not in two more round
-- trips: config.begin_write also answers what an earlier attempt with the same request
-- id recorded (read after the lock, so a concurrent attempt's record is seen once it
-- committed), and the write's statement records it (see write_commit in the code).
DROP FUNCTION config.begin_write(text, text[], text[], text[]);
CREATE FUNCTION config.begin_write(
    p_organization text,
    p_services text[],
    p_keys text[],
    p_schema_services text[],
    p_request_id text DEFAULT ''
) RETURNS TABLE (
    revision bigint,
    compact_revision bigint,
    entries jsonb,
    schemas jsonb,
    request jsonb
)
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
          WHERE s.organization = p_organization AND s.service = ANY(p_schema_services)),
        (SELECT jsonb_build_object(
                    'method', r.method, 'fingerprint', r.fingerprint, 'response', r.response)
           FROM config.requests r
          WHERE p_request_id <> ''
            AND r.organization = p_organization AND r.request_id = p_request_id);
END
$$;
GRANT EXECUTE ON FUNCTION config.begin_write(text, text[], text[], text[], text)
    TO agentready_config;
