"""ProvisionerService: One Kubernetes namespace per tenant, with its guard objects, kept converged."""
