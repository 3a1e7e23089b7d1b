SELECT applied, run_id, step_slug, task_index, attempt, timeout, run_input, deps_output, item, flow_slug
FROM pgflow.complete_and_claim($1, $2, $3, $4, $5::jsonb[], $6, $7, $8, $9, $10, $11, $12)
