"""TenantService use cases: transactions, sagas, tokens."""
