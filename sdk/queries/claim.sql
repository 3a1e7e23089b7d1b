SELECT run_id, step_slug, task_index, attempt, timeout, run_input, deps_output, item, flow_slug
FROM pgflow.claim_tasks($1, $2, $3, $4, $5, $6, $7)
