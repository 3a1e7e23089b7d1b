SELECT pgflow.complete_tasks($1, $2, $3, $4, $5::jsonb[])
