SELECT pgflow.worker_heartbeat($1, $2, $3)
