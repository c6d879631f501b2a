"""ConfigService: Per-organization configuration, feature flags and the WatchConfig stream."""
