SELECT flow_slug, status, output, coalesce(error_step, ''), coalesce(error_task_index, -1), coalesce(error_message, '')
FROM pgflow.runs
WHERE run_id = $1
