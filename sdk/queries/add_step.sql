SELECT pgflow.add_step($1, $2, deps => $3, step_type => $4,
                       max_attempts => $5, base_delay => $6, timeout => $7, start_delay => $8)
