package analysis

import (
	"go/token"
	"testing"
)

func TestCamelCase(t *testing.T) {
	for slug, want := range map[string]string{
		"analyze_websites": "AnalyzeWebsites",
		"summarize":        "Summarize",
		"user_id":          "UserID",
		"http_url_v2":      "HTTPURLV2",
		"a__b":             "AB",
		"a_b":              "AB",
		"step_2":           "Step2",
		"prepare_urls":     "PrepareUrls",
		"trailing_":        "Trailing",
	} {
		if got := camelCase(slug); got != want {
			t.Errorf("camelCase(%q) = %q, want %q", slug, got, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"orders", "order_lines", "a"}
	tests := []struct {
		in, want string
	}{
		{"ordres", "orders"},
		{"order", "orders"},
		{"order_line", "order_lines"},
		{"b", ""}, // a one-letter name is never "close"
		{"shipments", ""},
	}
	for _, tt := range tests {
		got, ok := suggest(tt.in, known)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("suggest(%q) = %q, %t; want %q", tt.in, got, ok, tt.want)
		}
	}
}

func TestParsePos(t *testing.T) {
	tests := []struct {
		in   string
		want token.Position
		ok   bool
	}{
		{"/a/b.go:3:14", token.Position{Filename: "/a/b.go", Line: 3, Column: 14}, true},
		{"b.go:3", token.Position{Filename: "b.go", Line: 3}, true},
		{"", token.Position{}, false},
		{"-", token.Position{Filename: "-"}, false},
	}
	for _, tt := range tests {
		got, ok := parsePos(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parsePos(%q) = %v, %t; want %v, %t", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
