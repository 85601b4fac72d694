"""Celery workers: thin tasks that claim jobs and run ``regcore.pipeline`` in child processes.

- ``app``: the Celery app (``celery -A worker.app worker``), configured by ``service.broker``
- ``tasks``: ``run_job(job_id)``, registered under ``service.broker.RUN_JOB_TASK``
- ``supervisor``: claims a job and runs it in a supervised child (heartbeat, cancel, limits)
- ``child``: the job's own process (``python -m worker.child JOB_ID``)
- ``reconciler``: the reaper and the re-enqueuer (``regbench reconcile``)
- ``launcher``: one Celery worker per GPU, or one CPU worker (``regbench worker``)
"""
