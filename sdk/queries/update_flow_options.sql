SELECT pgflow.update_flow_options($1, $2, $3, $4)
