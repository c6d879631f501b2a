"""TenantService adapters: PostgreSQL, Redis and the other services over gRPC."""
