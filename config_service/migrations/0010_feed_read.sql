-- One round trip for a feed's read of the revisions it fans out (BEGIN, the row-level
-- security set-up, the read and COMMIT were four): switch to the tenant role and
-- organization, then read the history rows of revisions p_after < r <= p_upto in
-- commit order. Written as a function only to save round trips.
CREATE FUNCTION config.changes_between(p_organization text, p_after bigint, p_upto bigint)
RETURNS TABLE (
    revision bigint,
    seq integer,
    service text,
    key text,
    change_type text,
    old_value jsonb,
    new_value jsonb,
    actor text,
    reason text,
    request_id text,
    created_at timestamptz
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'agentready_config', true);
    PERFORM set_config('app.org_id', p_organization, true);
    RETURN QUERY
        SELECT h.revision, h.seq, h.service, h.key, h.change_type, h.old_value, h.new_value,
               h.actor, h.reason, h.request_id, h.created_at
          FROM config.history h
         WHERE h.organization = p_organization AND h.revision > p_after
           AND h.revision <= p_upto
         ORDER BY h.revision, h.seq;
END
$$;
REVOKE ALL ON FUNCTION config.changes_between(text, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION config.changes_between(text, bigint, bigint) TO agentready_config;
