"""Profiles of function models on devices (workers.profiling): the writes (services), the reads (selectors),
the pages (views, urls). The Celery task that measures one is `profiles.measure` in workers.tasks."""
