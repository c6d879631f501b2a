-- One round trip to start a WatchConfig stream, instead of six (BEGIN REPEATABLE READ,
-- the row-level security set-up, the revision, the entries, the commit time, COMMIT):
-- switch to the tenant role and organization, then, in one statement (so one
-- snapshot), read the organization's revision, compacted-through revision and last
-- commit time, decide whether the stream starts with a snapshot (no start revision,
-- one in the future, or one whose history is compacted away) and, if so, read the
-- entries of the services watched (all when none is named). The first row carries the
-- organization's figures with no entry; every other row is one entry, in (service,
-- key) order. Written as a function only to save round trips; the rules stay in Python.
CREATE FUNCTION config.watch_start(
    p_organization text,
    p_services text[],
    p_start_revision bigint
) RETURNS TABLE (
    org_revision bigint,
    org_compact_revision bigint,
    commit_time timestamptz,
    is_snapshot boolean,
    service text,
    key text,
    value jsonb,
    revision bigint,
    updated_at timestamptz,
    updated_by text
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    RETURN QUERY
        WITH o AS (
            SELECT o.revision, o.compact_revision, o.updated_at
              FROM config.organizations o
             WHERE o.organization = p_organization
        ), head AS (
            SELECT coalesce((SELECT o.revision FROM o), 0::bigint) AS revision,
                   coalesce((SELECT o.compact_revision FROM o), 0::bigint) AS compacted,
                   (SELECT o.updated_at FROM o) AS commit_time
        ), start AS (
            SELECT head.revision, head.compacted, head.commit_time,
                   (p_start_revision <= 0 OR p_start_revision > head.revision
                    OR p_start_revision < head.compacted) AS snapshot
              FROM head
        )
        SELECT start.revision, start.compacted, start.commit_time, start.snapshot,
               NULL::text, NULL::text, NULL::jsonb, NULL::bigint, NULL::timestamptz,
               NULL::text
          FROM start
        UNION ALL
        SELECT start.revision, start.compacted, start.commit_time, start.snapshot,
               e.service, e.key, e.value, e.revision, e.updated_at, e.updated_by
          FROM start
          JOIN config.entries e
            ON start.snapshot AND e.organization = p_organization
           AND (cardinality(p_services) = 0 OR e.service = ANY(p_services))
        ORDER BY 5 NULLS FIRST, 6;
END
$$;
REVOKE ALL ON FUNCTION config.watch_start(text, text[], bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION config.watch_start(text, text[], bigint) TO agentready_config;

-- The organization's revision and compacted-through revision in one round trip (a
-- statement that is a transaction of its own), for the first stream of an organization
-- on a replica.
CREATE FUNCTION config.revision_of(p_organization text)
RETURNS TABLE (revision bigint, compact_revision bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    RETURN QUERY
        SELECT coalesce(max(o.revision), 0::bigint), coalesce(max(o.compact_revision), 0::bigint)
          FROM config.organizations o
         WHERE o.organization = p_organization;
END
$$;
REVOKE ALL ON FUNCTION config.revision_of(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION config.revision_of(text) TO agentready_config;
