// Package crawl has method handlers: their receivers become parameters of
// Register, in the order of their first handler.
package crawl

import (
	"context"
	"net/http"

	"github.com/pgflow-go/pgflow/sdk"
)

// Job is the flow's input.
//
//pgflow:flow crawl
type Job struct {
	URL string `json:"url"`
}

// Page is a fetched page.
type Page struct {
	Body string `json:"body"`
}

// Crawler fetches pages.
type Crawler struct {
	Client *http.Client
}

// Store keeps results.
type Store struct {
	Pages map[string]Page
}

// Fetch fetches the job's page; a pointer-receiver method.
//
//pgflow:step fetch
func (c *Crawler) Fetch(ctx context.Context, job Job) (Page, error) {
	return Page{Body: job.URL}, nil
}

// Count is a value-receiver method, called through the *Crawler parameter.
//
//pgflow:step count deps=fetch
func (c Crawler) Count(ctx context.Context, p Page) (int, error) {
	return len(p.Body), nil
}

// Save returns only an error.
//
//pgflow:step save deps=fetch,count
func (s *Store) Save(ctx context.Context, job Job, p Page, n int) error {
	s.Pages[job.URL] = p
	return nil
}

// NewWorker uses the generated Register: the package type-checks without
// its generated file because pgflowgen ignores errors about generated names.
func NewWorker(w *sdk.Worker, c *Crawler, s *Store) *sdk.Worker {
	Register(w, c, s)
	return w
}

// Start uses the generated typed handle.
func Start(ctx context.Context, client *sdk.Client, url string) (CrawlOutput, error) {
	run, err := Crawl.Start(ctx, client, Job{URL: url})
	if err != nil {
		return CrawlOutput{}, err
	}
	return run.Wait(ctx)
}
