package sdk

import (
	"encoding/json"
	"time"
)

// RunStatus is the state of a run.
type RunStatus string

// Run statuses.
const (
	RunStarted   RunStatus = "started"
	RunCompleted RunStatus = "completed"
	RunFailed    RunStatus = "failed"
	RunCancelled RunStatus = "cancelled"
)

// StepStatus is the state of one step of a run.
type StepStatus string

// Step statuses.
const (
	StepCreated   StepStatus = "created" // waiting for its dependencies
	StepStarted   StepStatus = "started" // its tasks are queued or running
	StepCompleted StepStatus = "completed"
	StepFailed    StepStatus = "failed"
	StepCancelled StepStatus = "cancelled" // its run ended before it did
)

// RunInfo is a run as stored, with its step states.
type RunInfo struct {
	ID             RunID           `json:"run_id"`
	Flow           string          `json:"flow_slug"`
	Status         RunStatus       `json:"status"`
	Input          json.RawMessage `json:"input"`
	Output         json.RawMessage `json:"output"` // an object keyed by leaf step slug, once completed
	RemainingSteps int             `json:"remaining_steps"`
	ErrorStep      string          `json:"error_step"`
	ErrorTaskIndex *int            `json:"error_task_index"`
	ErrorMessage   string          `json:"error_message"`
	StartedAt      time.Time       `json:"started_at"`
	EndedAt        *time.Time      `json:"ended_at"`
	Steps          []StepInfo      `json:"steps"`
}

// StepInfo is one step of a run.
type StepInfo struct {
	Slug   string     `json:"step_slug"`
	Type   string     `json:"step_type"` // "single" or "fanout"
	Status StepStatus `json:"status"`
	// TotalTasks is the number of tasks the step started with (nil until it
	// starts); RemainingTasks counts those not completed yet.
	TotalTasks     *int       `json:"total_tasks"`
	RemainingTasks *int       `json:"remaining_tasks"`
	ErrorMessage   string     `json:"error_message"`
	StartedAt      *time.Time `json:"started_at"`
	EndedAt        *time.Time `json:"ended_at"`
}

// CompletedTasks is the number of the step's tasks completed so far.
func (s StepInfo) CompletedTasks() int {
	if s.TotalTasks == nil || s.RemainingTasks == nil {
		return 0
	}
	return *s.TotalTasks - *s.RemainingTasks
}

// Progress sums the tasks of all started steps: how many completed, of how many.
func (r *RunInfo) Progress() (completed, total int) {
	for _, s := range r.Steps {
		if s.TotalTasks != nil {
			total += *s.TotalTasks
			completed += s.CompletedTasks()
		}
	}
	return completed, total
}

// runResult is what Wait needs of a run.
type runResult struct {
	flow      string
	status    RunStatus
	output    []byte
	errStep   string
	errIndex  int
	errDetail string
}

// err returns the error describing an ended run that did not complete.
func (r runResult) err(id RunID) error {
	switch r.status {
	case RunFailed, RunCancelled:
		return &RunError{RunID: id, Flow: r.flow, Status: r.status, Step: r.errStep, TaskIndex: r.errIndex, Message: r.errDetail}
	}
	return nil
}
