"""ProvisionerService: a Kubernetes namespace per tenant, with its guard objects, converged."""
