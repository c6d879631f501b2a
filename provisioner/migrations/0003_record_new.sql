-- One round trip to record a new environment (the first ProvisionTenant of an
-- organization, without a request id): try the tenant's advisory lock (session-level,
-- so it outlives this statement), switch to the tenant role and organization, insert
-- the environment, PROVISIONING, and its initial quota in the history. Called on its
-- own (not inside a transaction) it is a single statement, committed durably as it
-- ends. ``env`` is null when the organization has an environment already (nothing
-- written); ``locked`` says whether the lock was taken either way.
-- Written as a function only to save round trips; the rules stay in Python.
CREATE FUNCTION provisioner.record_new(
    p_organization text,
    p_lock_key bigint,
    p_owners text[],
    p_quota jsonb,
    p_labels jsonb,
    p_backend text,
    p_conditions jsonb,
    p_due_in double precision,
    p_actor text
) RETURNS TABLE (locked boolean, env provisioner.environments)
LANGUAGE plpgsql AS $$
DECLARE
    v_locked boolean;
    v_env provisioner.environments;
BEGIN
    v_locked := pg_try_advisory_lock(p_lock_key);
    PERFORM set_config('role', 'agentready_provisioner', true);
    PERFORM set_config('app.org_id', p_organization, true);
    PERFORM set_config('synchronous_commit', 'on', true);
    INSERT INTO provisioner.environments AS e
        (organization, owners, quota, labels, state, backend, conditions, next_reconcile_at)
        VALUES (p_organization, p_owners, p_quota, p_labels, 'PROVISIONING', p_backend,
                p_conditions, now() + make_interval(secs => p_due_in))
        ON CONFLICT (organization) DO NOTHING
        RETURNING e.* INTO v_env;
    IF FOUND THEN
        INSERT INTO provisioner.quota_history
            (organization, seq, old_quota, new_quota, actor, reason, request_id)
            SELECT p_organization, COALESCE(MAX(h.seq), 0) + 1, NULL, p_quota, p_actor,
                   'provisioned', ''
              FROM provisioner.quota_history h WHERE h.organization = p_organization;
    END IF;
    RETURN QUERY SELECT v_locked, v_env;
END
$$;
-- Callable by the service (a member of the tenant role, as it must be to switch to it).
REVOKE ALL ON FUNCTION provisioner.record_new(
    text, bigint, text[], jsonb, jsonb, text, jsonb, double precision, text
) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION provisioner.record_new(
    text, bigint, text[], jsonb, jsonb, text, jsonb, double precision, text
) TO agentready_provisioner;
