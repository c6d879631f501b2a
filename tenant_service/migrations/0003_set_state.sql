-- One round trip for a saga step's outcome: switch to the tenant role and organization,
-- choose whether the commit waits for the disk, and move the organization to a state
-- if it is in one of the expected ones (any, when none is given). Called on its own
-- (not inside a transaction) it is a single statement, committed as it ends. Written
-- as a function only to save round trips; the rules stay in Python.
CREATE FUNCTION tenant.set_state(
    p_organization text,
    p_durable boolean,
    p_state text,
    p_reason text,
    p_failures integer,
    p_attempt_in double precision,
    p_expect text[]
) RETURNS SETOF tenant.organizations
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'agentready_tenant', true);
    PERFORM set_config('app.org_id', p_organization, true);
    PERFORM set_config('synchronous_commit', CASE WHEN p_durable THEN 'on' ELSE 'off' END, true);
    RETURN QUERY
    UPDATE tenant.organizations o SET
        state = p_state,
        state_reason = p_reason,
        failures = p_failures,
        next_attempt_at = now() + make_interval(secs => p_attempt_in),
        version = o.version
            + CASE WHEN o.state = p_state AND o.state_reason = p_reason THEN 0 ELSE 1 END,
        updated_at = CASE WHEN o.state = p_state AND o.state_reason = p_reason
            THEN o.updated_at ELSE now() END,
        deleted_at = CASE WHEN p_state IN ('DELETING', 'DELETED')
            THEN coalesce(o.deleted_at, now()) ELSE o.deleted_at END
    WHERE o.organization = p_organization
      AND (cardinality(p_expect) = 0 OR o.state = ANY(p_expect))
    RETURNING o.*;
END
$$;
-- Callable by the service (a member of the tenant role, as it must be to switch to it).
REVOKE ALL ON FUNCTION tenant.set_state(text, boolean, text, text, integer, double precision, text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant.set_state(text, boolean, text, text, integer, double precision, text[])
    TO agentready_tenant;
