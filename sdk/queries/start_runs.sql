SELECT pgflow.start_flows($1, $2::json[], $3::uuid[])
