SELECT pgflow.create_flow($1, max_attempts => $2, base_delay => $3, timeout => $4)
