"""gRPC entry points of ConfigService: protobuf in, domain calls, protobuf out."""
