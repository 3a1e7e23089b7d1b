SELECT pgflow.worker_stopped($1)
