"""The HTTP app: application factory, web chat page, health, background worker."""
