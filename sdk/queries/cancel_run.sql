SELECT pgflow.cancel_run($1)
