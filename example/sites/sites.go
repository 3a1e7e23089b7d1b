// Package sites is the analyze-websites flow: prepare_urls turns the input
// into sites, analyze_site fans out over them (one task per site), and
// summarize adds the analyses up.
//
// The handlers are plain functions marked with //pgflow: comments;
// `go generate` writes pgflow_gen.go (the typed AnalyzeWebsites handle and
// Register) and pgflow_gen.sql (the flow as SQL, for migration tools).
package sites

//go:generate go run github.com/pgflow-go/pgflow/cmd/pgflowgen

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgflow-go/pgflow/sdk"
)

// SitesInput is the input of a run: the sites to analyze.
//
//pgflow:flow analyze_websites maxAttempts=3 baseDelay=100ms timeout=5m
type SitesInput struct {
	URLs []string `json:"urls"`
}

// Site is one site to analyze.
type Site struct {
	URL  string `json:"url"`
	Host string `json:"host"`
}

// Analysis is what analyze_site finds out about one site.
type Analysis struct {
	URL      string `json:"url"`
	Words    int    `json:"words"`
	TopWord  string `json:"top_word"`
	Attempts int    `json:"attempts"` // attempts this worker made (1 unless it failed once)
}

// Summary is the output of the flow.
type Summary struct {
	Sites      int    `json:"sites"`
	TotalWords int    `json:"total_words"`
	Largest    string `json:"largest"` // the site with the most words
	Retried    int    `json:"retried"` // sites that needed a second attempt
}

// PrepareURLs validates and normalises the input's URLs.
//
//pgflow:step prepare_urls
func PrepareURLs(ctx context.Context, in SitesInput) ([]Site, error) {
	sites := make([]Site, 0, len(in.URLs))
	for _, raw := range in.URLs {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Host == "" {
			// Retrying cannot fix a bad URL.
			return nil, sdk.Permanent(fmt.Errorf("invalid URL %q", raw))
		}
		sites = append(sites, Site{URL: u.String(), Host: u.Hostname()})
	}
	return sites, nil
}

// Analyzer analyzes sites. Its fields are the handler's dependencies: the
// generated Register takes an *Analyzer, so no globals are needed.
type Analyzer struct {
	// Delay is how long fetching a site takes (simulated; no network).
	Delay time.Duration
	// FailEvery makes every n-th site (by position of its host's hash)
	// fail its first attempt, to show retries; 0 disables it.
	FailEvery int

	mu     sync.Mutex
	failed map[string]bool
}

// errFlaky is the failure FailEvery injects.
var errFlaky = errors.New("connection reset (simulated)")

// AnalyzeSite fetches one site (simulated) and counts its words.
//
//pgflow:step analyze_site deps=prepare_urls fanout maxAttempts=5 timeout=30s
func (a *Analyzer) AnalyzeSite(ctx context.Context, site Site) (Analysis, error) {
	attempts := 1
	if a.FailEvery > 0 && hash(site.URL)%uint32(a.FailEvery) == 0 {
		a.mu.Lock()
		if a.failed == nil {
			a.failed = map[string]bool{}
		}
		first := !a.failed[site.URL]
		a.failed[site.URL] = true
		a.mu.Unlock()
		if first {
			return Analysis{}, fmt.Errorf("fetch %s: %w", site.URL, errFlaky)
		}
		attempts = 2
	}
	text, err := a.fetch(ctx, site.URL)
	if err != nil {
		return Analysis{}, err
	}
	words := strings.Fields(text)
	return Analysis{URL: site.URL, Words: len(words), TopWord: topWord(words), Attempts: attempts}, nil
}

// fetch returns the text of a page: made up from its URL, so the demo needs
// no network and every run gives the same numbers. It honours ctx.
func (a *Analyzer) fetch(ctx context.Context, u string) (string, error) {
	if a.Delay > 0 {
		t := time.NewTimer(a.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	vocabulary := []string{"postgres", "workflow", "fanout", "task", "step", "run", "worker", "queue", "go", "json"}
	h := hash(u)
	n := 50 + int(h%200)
	var b strings.Builder
	for i := range n {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		h = h*1664525 + 1013904223
		b.WriteString(vocabulary[(h>>16)%uint32(len(vocabulary))])
		if i < n-1 {
			b.WriteByte(' ')
		}
	}
	return b.String(), nil
}

// Summarize adds the analyses up.
//
//pgflow:step summarize deps=analyze_site
func Summarize(ctx context.Context, results []Analysis) (Summary, error) {
	s := Summary{Sites: len(results)}
	most := -1
	for _, r := range results {
		s.TotalWords += r.Words
		if r.Words > most {
			most, s.Largest = r.Words, r.URL
		}
		if r.Attempts > 1 {
			s.Retried++
		}
	}
	return s, nil
}

// URLs returns n made-up site URLs for a demo run.
func URLs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("https://site%03d.example/", i+1)
	}
	return out
}

func hash(s string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return h.Sum32()
}

func topWord(words []string) string {
	counts := map[string]int{}
	for _, w := range words {
		counts[w]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	best := ""
	for _, k := range keys {
		if best == "" || counts[k] > counts[best] {
			best = k
		}
	}
	return best
}
