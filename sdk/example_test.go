package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/sdk"
	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

// A flow that counts the words of some texts: split the input into texts,
// count each text's words in a fanout, then add them up.
type Texts struct {
	Texts []string `json:"texts"`
}

type WordCountOutput struct {
	Total int `json:"total"` // the output of the leaf step "total"
}

var WordCount = sdk.NewFlow[Texts, WordCountOutput](sdk.FlowSpec{
	Slug:        "word_count",
	MaxAttempts: 3,
	Timeout:     time.Minute,
	Steps: []sdk.StepSpec{
		{Slug: "texts"},
		{Slug: "count", Deps: []string{"texts"}, Fanout: true},
		{Slug: "total", Deps: []string{"count"}},
	},
})

// registerWordCount registers the flow's handlers by hand (pgflowgen
// writes this for annotated handlers).
func registerWordCount(w *sdk.Worker) {
	sdk.HandleStep(w, WordCount, "texts", func(ctx context.Context, in Texts, _ struct{}) ([]string, error) {
		return in.Texts, nil
	})
	sdk.HandleFanout(w, WordCount, "count", func(ctx context.Context, text string) (int, error) {
		return len(strings.Fields(text)), nil
	})
	sdk.HandleStep(w, WordCount, "total", func(ctx context.Context, _ Texts, deps struct {
		Count []int `json:"count"`
	}) (int, error) {
		total := 0
		for _, n := range deps.Count {
			total += n
		}
		return total, nil
	})
}

// withDatabase runs fn against a throwaway PostgreSQL with the pgflow
// schema and a running worker.
func withDatabase(fn func(ctx context.Context, client *sdk.Client)) {
	ctx := context.Background()
	srv, err := throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	pool, err := pgxpool.New(ctx, srv.ConnString())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	if err := sdk.Migrate(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	w := sdk.NewWorker(pool, sdk.WorkerOptions{Concurrency: 8, Logger: quiet})
	registerWordCount(w)
	workerCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(workerCtx) }()
	defer func() { stop(); <-done }()

	client := sdk.NewClient(pool, sdk.WithClientLogger(quiet))
	defer client.Close()
	fn(ctx, client)
}

// Start a typed run and wait for its typed output.
func Example() {
	withDatabase(func(ctx context.Context, client *sdk.Client) {
		run, err := WordCount.Start(ctx, client, Texts{Texts: []string{"one two", "three", "four five six"}})
		if err != nil {
			fmt.Println(err)
			return
		}
		out, err := run.Wait(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("total words:", out.Total)
	})
	// Output: total words: 6
}

// Start a run by slug with a JSON input, wait for its JSON output, and
// read its step states.
func ExampleClient_WaitRun() {
	withDatabase(func(ctx context.Context, client *sdk.Client) {
		if err := client.EnsureFlows(ctx, WordCount.Spec()); err != nil {
			fmt.Println(err)
			return
		}
		id, err := client.StartFlow(ctx, "word_count", json.RawMessage(`{"texts": ["a b", "c"]}`))
		if err != nil {
			fmt.Println(err)
			return
		}
		out, err := client.WaitRun(ctx, id)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(string(out))
		info, err := client.GetRun(ctx, id)
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, s := range info.Steps {
			fmt.Printf("%s: %s, %d of %d tasks\n", s.Slug, s.Status, s.CompletedTasks(), *s.TotalTasks)
		}
	})
	// Output:
	// {"total": 3}
	// texts: completed, 1 of 1 tasks
	// count: completed, 2 of 2 tasks
	// total: completed, 1 of 1 tasks
}

// A flow whose first step is a fanout maps over its input, which must then
// be a JSON array.
func ExampleClient_StartFlow_invalidInput() {
	withDatabase(func(ctx context.Context, client *sdk.Client) {
		each := sdk.FlowSpec{Slug: "each_text", Steps: []sdk.StepSpec{{Slug: "count", Fanout: true}}}
		if err := client.EnsureFlows(ctx, each); err != nil {
			fmt.Println(err)
			return
		}
		_, err := client.StartFlow(ctx, "each_text", json.RawMessage(`{"not": "an array"}`))
		fmt.Println(errors.Is(err, sdk.ErrInvalidInput))
		fmt.Println(err)
	})
	// Output:
	// true
	// pgflow: start "each_text": flow "each_text" maps its input with root fanout step "count": the input must be a JSON array, got object: pgflow: invalid input
}

// Permanent marks an error that retrying cannot fix.
func ExamplePermanent() {
	err := fmt.Errorf("parse %q: %w", "x", sdk.Permanent(errors.New("not a number")))
	fmt.Println(sdk.IsPermanent(err), err)
	// Output: true parse "x": not a number
}

// Validate reports every problem of a hand-written spec at once.
func ExampleFlowSpec_Validate() {
	spec := sdk.FlowSpec{Slug: "report", Steps: []sdk.StepSpec{
		{Slug: "fetch", Deps: []string{"login"}},
		{Slug: "each", Deps: []string{"fetch", "other"}, Fanout: true},
	}}
	fmt.Println(spec.Validate())
	// Output:
	// flow "report": step "fetch" depends on unknown step "login"
	// flow "report": step "each" depends on unknown step "other"
	// flow "report": step "each": fanout steps must have exactly one dependency (or none, to map over the flow input), got fetch, other
}
