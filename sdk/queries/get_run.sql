SELECT pgflow.get_run($1)
