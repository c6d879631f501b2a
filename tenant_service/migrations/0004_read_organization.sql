-- One round trip for GetOrganization: switch to the tenant role and organization, then
-- read it. Called on its own (not inside a transaction) it is a single statement, a
-- transaction of its own, instead of BEGIN, the row-level security set-up, the read and
-- COMMIT. Written as a function only to save round trips; the rules stay in Python.
CREATE FUNCTION tenant.read_organization(p_organization text)
RETURNS SETOF tenant.organizations
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'agentready_tenant', true);
    PERFORM set_config('app.org_id', p_organization, true);
    RETURN QUERY
        SELECT * FROM tenant.organizations o WHERE o.organization = p_organization;
END
$$;
-- Callable by the service (a member of the tenant role, as it must be to switch to it).
REVOKE ALL ON FUNCTION tenant.read_organization(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant.read_organization(text) TO agentready_tenant;
