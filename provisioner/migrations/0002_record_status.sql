-- One round trip for a reconcile's outcome: switch to the tenant role and organization,
-- choose whether the commit waits for the disk, and write the status. Called on its own
-- (not inside a transaction) it is a single statement, committed as it ends; the
-- tenant's advisory lock, held by the calling session, keeps other converges out.
-- Written as a function only to save round trips; the rules stay in Python.
CREATE FUNCTION provisioner.record_status(
    p_organization text,
    p_durable boolean,
    p_state text,
    p_backend text,
    p_observed_generation bigint,
    p_conditions jsonb,
    p_observed jsonb,
    p_last_error text,
    p_failures integer,
    p_next_reconcile_at timestamptz,
    p_deletion_progress text,
    p_changed boolean,
    p_applied_generation bigint
) RETURNS SETOF provisioner.environments
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'agentready_provisioner', true);
    PERFORM set_config('app.org_id', p_organization, true);
    PERFORM set_config('synchronous_commit', CASE WHEN p_durable THEN 'on' ELSE 'off' END, true);
    -- Once deprovisioning began, an apply's outcome (p_applied_generation set) is not
    -- written; a spec that moved past the generation applied is due at once.
    RETURN QUERY
    UPDATE provisioner.environments e SET
        state = p_state,
        backend = p_backend,
        observed_generation = p_observed_generation,
        conditions = p_conditions,
        observed = p_observed,
        last_error = p_last_error,
        failures = p_failures,
        deletion_progress = p_deletion_progress,
        reconciled_at = now(),
        next_reconcile_at = CASE
            WHEN p_applied_generation IS NULL OR e.generation = p_applied_generation
            THEN p_next_reconcile_at ELSE now() END,
        version = e.version + CASE WHEN p_changed THEN 1 ELSE 0 END,
        updated_at = CASE WHEN p_changed THEN now() ELSE e.updated_at END
    WHERE e.organization = p_organization
      AND (p_applied_generation IS NULL OR e.state NOT IN ('DELETING', 'DELETED'))
    RETURNING e.*;
END
$$;
-- Callable by the service (a member of the tenant role, as it must be to switch to it).
REVOKE ALL ON FUNCTION provisioner.record_status(
    text, boolean, text, text, bigint, jsonb, jsonb, text, integer, timestamptz, text, boolean,
    bigint
) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION provisioner.record_status(
    text, boolean, text, text, bigint, jsonb, jsonb, text, integer, timestamptz, text, boolean,
    bigint
) TO agentready_provisioner;
