"""gRPC entry points of ProvisionerService: protobuf in, domain calls, protobuf out."""
