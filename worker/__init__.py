"""Celery workers: thin tasks that claim jobs and run ``regcore.pipeline`` (issue 5)."""
