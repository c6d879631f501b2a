"""The Provisioner's domain: tenant specs, quantities, manifests, states. No gRPC, no SQL."""
