SELECT pgflow.start_flows($1, $2::jsonb[], $3::uuid[])
