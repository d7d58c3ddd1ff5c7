"""HTTP only: routers turn requests into calls on the services."""
