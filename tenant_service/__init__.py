"""TenantService: Users, login and tokens, organizations, members, projects and notes."""
