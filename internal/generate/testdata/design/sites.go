// Package sites is the design's example: a fanout over prepared URLs and a
// summary of the results.
package sites

import "context"

// SitesInput is the flow's input.
//
//pgflow:flow analyze_websites maxAttempts=3 baseDelay=1s timeout=5m
type SitesInput struct {
	URLs []string `json:"urls"`
}

// Site is one site to analyse.
type Site struct {
	URL string `json:"url"`
}

// Analysis is what analysing a site gives.
type Analysis struct {
	URL   string `json:"url"`
	Words int    `json:"words"`
}

// Summary sums the analyses up.
type Summary struct {
	Sites      int `json:"sites"`
	TotalWords int `json:"total_words"`
}

// PrepareURLs turns the input into sites.
//
//pgflow:step prepare_urls
func PrepareURLs(ctx context.Context, in SitesInput) ([]Site, error) {
	sites := make([]Site, len(in.URLs))
	for i, u := range in.URLs {
		sites[i] = Site{URL: u}
	}
	return sites, nil
}

// AnalyzeSite analyses one site.
//
//pgflow:step analyze_site deps=prepare_urls fanout maxAttempts=5 timeout=30s
func AnalyzeSite(ctx context.Context, site Site) (Analysis, error) {
	return Analysis{URL: site.URL, Words: len(site.URL)}, nil
}

// Summarize adds the analyses up.
//
//pgflow:step summarize deps=analyze_site
func Summarize(ctx context.Context, results []Analysis) (Summary, error) {
	s := Summary{Sites: len(results)}
	for _, r := range results {
		s.TotalWords += r.Words
	}
	return s, nil
}
