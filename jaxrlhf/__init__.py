"""jaxrlhf."""
