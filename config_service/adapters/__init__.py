"""ConfigService adapters: PostgreSQL (the truth) and Redis (notifications)."""
