"""ConfigService use cases: transactions around the domain, notifications after them."""
