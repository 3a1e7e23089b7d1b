package sdk

import _ "embed"

// The SQL this package runs, one statement per file.
var (
	//go:embed queries/start_runs.sql
	startRunsSQL string
	//go:embed queries/run_result.sql
	runResultSQL string
	//go:embed queries/get_run.sql
	getRunSQL string
	//go:embed queries/cancel_run.sql
	cancelRunSQL string
)

// Shape sync.
var (
	//go:embed queries/shapes.sql
	shapesSQL string
	//go:embed queries/shape_lock.sql
	shapeLockSQL string
	//go:embed queries/create_flow.sql
	createFlowSQL string
	//go:embed queries/add_step.sql
	addStepSQL string
	//go:embed queries/update_flow_options.sql
	updateFlowOptionsSQL string
	//go:embed queries/update_step_options.sql
	updateStepOptionsSQL string
)

// Worker.
var (
	//go:embed queries/claim.sql
	claimSQL string
	//go:embed queries/complete.sql
	completeSQL string
	//go:embed queries/complete_claim.sql
	completeClaimSQL string
	//go:embed queries/fail.sql
	failSQL string
	//go:embed queries/release.sql
	releaseSQL string
	//go:embed queries/next_visible.sql
	nextVisibleSQL string
	//go:embed queries/ended_runs.sql
	endedRunsSQL string
	//go:embed queries/heartbeat.sql
	heartbeatSQL string
	//go:embed queries/stopped.sql
	stoppedSQL string
)
