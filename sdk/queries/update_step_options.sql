SELECT pgflow.update_step_options($1, $2, $3, $4, $5, $6)
