"""Adapters: PostgreSQL (desired state, status, history), Kubernetes and GitOps backends."""
