SELECT pgflow.release_tasks($1, $2, $3, $4)
