SELECT run_id FROM pgflow.runs WHERE run_id = ANY ($1) AND status <> 'started'
