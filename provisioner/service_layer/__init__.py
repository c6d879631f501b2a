"""Use cases: provisioning, quota changes, deprovisioning, reconciliation, leadership."""
