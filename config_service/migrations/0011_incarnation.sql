-- An organization's revisions start over when PurgeConfig removes it: its incarnation
-- tells one life of an organization from the next. A write decided on what a replica
-- remembers of the organization (config_service/service_layer/memo.py) names the
-- incarnation it remembers, and config.commit_write writes only if it is still that
-- one, as it already checks the revision: a purge on another replica can then never
-- pass for the organization remembered, whatever revision it has reached since.
-- config.read_for_write answers the incarnation; config.commit_write takes it (NULL:
-- not checked, as before) and answers it. The functions of 0008 are replaced: their
-- callers of before (12 arguments, the columns they read by name) call these alike.

CREATE SEQUENCE config.incarnations;
ALTER TABLE config.organizations
    ADD COLUMN incarnation bigint NOT NULL DEFAULT nextval('config.incarnations');
GRANT USAGE ON SEQUENCE config.incarnations TO agentready_config;

DROP FUNCTION config.read_for_write(text, text[], text[], text[], text);
DROP FUNCTION config.commit_write(
    text, bigint, text[], jsonb, jsonb, timestamptz, bigint, bigint, text, text, text, jsonb
);

CREATE FUNCTION config.read_for_write(
    p_organization text,
    p_services text[],
    p_keys text[],
    p_schema_services text[],
    p_request_id text
) RETURNS TABLE (
    revision bigint,
    compact_revision bigint,
    entries jsonb,
    schemas jsonb,
    schema_versions jsonb,
    request jsonb,
    incarnation bigint
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    RETURN QUERY SELECT
        coalesce((SELECT o.revision FROM config.organizations o
                   WHERE o.organization = p_organization), 0::bigint),
        coalesce((SELECT o.compact_revision FROM config.organizations o
                   WHERE o.organization = p_organization), 0::bigint),
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
        (SELECT coalesce(jsonb_object_agg(s.service, s.version), '{}'::jsonb)
           FROM config.schemas s
          WHERE s.organization = p_organization AND s.service = ANY(p_schema_services)),
        (SELECT jsonb_build_object(
                    'method', r.method, 'fingerprint', r.fingerprint, 'response', r.response)
           FROM config.requests r
          WHERE p_request_id <> ''
            AND r.organization = p_organization AND r.request_id = p_request_id),
        (SELECT o.incarnation FROM config.organizations o
          WHERE o.organization = p_organization);
END
$$;
REVOKE ALL ON FUNCTION config.read_for_write(text, text[], text[], text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION config.read_for_write(text, text[], text[], text[], text)
    TO agentready_config;

CREATE FUNCTION config.commit_write(
    p_organization text,
    p_revision bigint,
    p_schema_services text[],
    p_schema_versions jsonb,
    p_changes jsonb,
    p_now timestamptz,
    p_limit_keys bigint,
    p_limit_bytes bigint,
    p_request_id text,
    p_method text,
    p_fingerprint text,
    p_response jsonb,
    p_incarnation bigint DEFAULT NULL
) RETURNS TABLE (
    outcome text,
    key_count bigint,
    stored_bytes bigint,
    added_keys bigint,
    added_bytes bigint,
    incarnation bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    v_revision bigint;
    v_keys bigint;
    v_bytes bigint;
    v_added_keys bigint;
    v_added_bytes bigint;
    v_incarnation bigint;
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    SELECT o.revision, o.key_count, o.stored_bytes, o.incarnation
        INTO v_revision, v_keys, v_bytes, v_incarnation
        FROM config.organizations o WHERE o.organization = p_organization FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO config.organizations (organization) VALUES (p_organization)
            ON CONFLICT (organization) DO NOTHING;
        SELECT o.revision, o.key_count, o.stored_bytes, o.incarnation
            INTO v_revision, v_keys, v_bytes, v_incarnation
            FROM config.organizations o WHERE o.organization = p_organization FOR UPDATE;
    END IF;
    IF v_revision <> p_revision
       OR v_incarnation <> p_incarnation
       OR (SELECT coalesce(jsonb_object_agg(s.service, s.version), '{}'::jsonb)
             FROM config.schemas s
            WHERE s.organization = p_organization AND s.service = ANY(p_schema_services))
          <> p_schema_versions
       OR (p_request_id <> '' AND EXISTS (
             SELECT 1 FROM config.requests r
              WHERE r.organization = p_organization AND r.request_id = p_request_id))
    THEN
        RETURN QUERY SELECT 'conflict'::text, v_keys, v_bytes, 0::bigint, 0::bigint,
                            v_incarnation;
        RETURN;
    END IF;

    SELECT
        coalesce(sum(CASE WHEN c.change_type = 'delete' THEN -1
                          WHEN c.old_value IS NULL THEN 1 ELSE 0 END), 0),
        coalesce(sum(
            CASE WHEN c.new_value IS NULL THEN 0
                 ELSE config.entry_bytes(c.service, c.key, c.new_value) END
          - CASE WHEN c.old_value IS NULL THEN 0
                 ELSE config.entry_bytes(c.service, c.key, c.old_value) END), 0)
      INTO v_added_keys, v_added_bytes
      FROM jsonb_to_recordset(p_changes) AS c(
           service text, key text, change_type text, old_value jsonb, new_value jsonb);
    -- A write that grows the organization past a limit is refused; one that shrinks it
    -- always passes, so an organization over a lowered limit can recover.
    IF (v_added_keys > 0 AND v_keys + v_added_keys > p_limit_keys)
       OR (v_added_bytes > 0 AND v_bytes + v_added_bytes > p_limit_bytes) THEN
        RETURN QUERY SELECT 'limit'::text, v_keys + v_added_keys, v_bytes + v_added_bytes,
                            v_added_keys, v_added_bytes, v_incarnation;
        RETURN;
    END IF;

    IF jsonb_array_length(p_changes) > 0 THEN
        UPDATE config.organizations o
           SET revision = p_revision + 1, updated_at = p_now,
               key_count = o.key_count + v_added_keys,
               stored_bytes = o.stored_bytes + v_added_bytes
         WHERE o.organization = p_organization;
        WITH c AS (
            SELECT * FROM jsonb_to_recordset(p_changes) AS c(
                seq int, service text, key text, change_type text, old_value jsonb,
                new_value jsonb, actor text, reason text, request_id text)
        ), upserted AS (
            INSERT INTO config.entries
                (organization, service, key, value, revision, updated_at, updated_by)
            SELECT p_organization, c.service, c.key, c.new_value, p_revision + 1, p_now,
                   c.actor
              FROM c WHERE c.change_type = 'set'
            ON CONFLICT (organization, service, key) DO UPDATE
                SET value = EXCLUDED.value, revision = EXCLUDED.revision,
                    updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by
        ), deleted AS (
            DELETE FROM config.entries e USING c
             WHERE c.change_type = 'delete' AND e.organization = p_organization
               AND e.service = c.service AND e.key = c.key
        )
        INSERT INTO config.history
            (organization, revision, seq, service, key, change_type, old_value,
             new_value, actor, reason, request_id, created_at)
        SELECT p_organization, p_revision + 1, c.seq, c.service, c.key, c.change_type,
               c.old_value, c.new_value, c.actor, c.reason, c.request_id, p_now
          FROM c;
    END IF;
    IF p_request_id <> '' THEN
        INSERT INTO config.requests (organization, request_id, method, fingerprint, response)
        VALUES (p_organization, p_request_id, p_method, p_fingerprint, p_response);
    END IF;
    RETURN QUERY SELECT 'ok'::text, v_keys + v_added_keys, v_bytes + v_added_bytes,
                        v_added_keys, v_added_bytes, v_incarnation;
END
$$;
REVOKE ALL ON FUNCTION config.commit_write(
    text, bigint, text[], jsonb, jsonb, timestamptz, bigint, bigint, text, text, text, jsonb, bigint
) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION config.commit_write(
    text, bigint, text[], jsonb, jsonb, timestamptz, bigint, bigint, text, text, text, jsonb, bigint
) TO agentready_config;
