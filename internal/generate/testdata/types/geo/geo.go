// Package geo is another package whose types the handlers use.
package geo

// Point is a point.
type Point struct {
	Lat float64 `json:"lat"`
	Lng float64 `json:"lng"`
}

// Page is a generic page of results.
type Page[T any] struct {
	Items []T  `json:"items"`
	Next  *int `json:"next,omitempty"`
}
