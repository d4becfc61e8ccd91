//! Celery protocol v2.
