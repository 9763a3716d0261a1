"""Shadow sidecar: let an AI agent earn autonomy on real work, one task type at a time."""
