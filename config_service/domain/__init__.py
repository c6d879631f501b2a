"""ConfigService domain: values, schemas, changes. No gRPC, no SQL."""
