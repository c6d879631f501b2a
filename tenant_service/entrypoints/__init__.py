"""gRPC entry points of TenantService: protobuf in, domain calls, protobuf out."""
