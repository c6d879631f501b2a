-- One round trip for GetConfig: switch to the tenant role and organization, then read
-- the key's entry or, when it is not set, its service's schema (which may give it a
-- default). Called on its own (not inside a transaction) it is a single statement, a
-- transaction of its own, instead of BEGIN, the row-level security set-up, the reads
-- and COMMIT. Written as a function only to save round trips; the rules stay in
-- Python.
CREATE FUNCTION config.read_entry(p_organization text, p_service text, p_key text)
RETURNS TABLE (
    is_set boolean,
    value jsonb,
    revision bigint,
    updated_at timestamptz,
    updated_by text,
    schema jsonb
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    RETURN QUERY
        SELECT true, e.value, e.revision, e.updated_at, e.updated_by, NULL::jsonb
          FROM config.entries e
         WHERE e.organization = p_organization AND e.service = p_service AND e.key = p_key;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT false, NULL::jsonb, NULL::bigint, NULL::timestamptz, NULL::text, s.schema
              FROM config.schemas s
             WHERE s.organization = p_organization AND s.service = p_service;
    END IF;
END
$$;
-- Callable by the service (a member of the tenant role, as it must be to switch to it).
REVOKE ALL ON FUNCTION config.read_entry(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION config.read_entry(text, text, text) TO agentready_config;
