// Package sites fans out over a named slice type.
package sites

import "context"

// Request is the flow's input.
//
//pgflow:flow crawl_sites
type Request struct {
	Domain string `json:"domain"`
}

// Site is one site.
type Site struct {
	Host string `json:"host"`
}

// Sites is a named slice: a fanout over it takes a Site.
type Sites []Site

// List lists sites.
//
//pgflow:step list
func List(ctx context.Context, r Request) (Sites, error) {
	return Sites{{Host: "a." + r.Domain}, {Host: "b." + r.Domain}}, nil
}

// Visit visits one site.
//
//pgflow:step visit deps=list fanout
func Visit(ctx context.Context, s Site) (string, error) { return s.Host, nil }
