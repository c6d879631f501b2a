"""TenantService domain: users, organizations, members, projects, notes, keys; no I/O."""
