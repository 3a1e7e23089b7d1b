package throwawaypg

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// BenchmarkNew measures how long New takes to return a server that accepts
// connections (initdb included), and reports the median as "ms/start-median".
// Close is not timed. Run with e.g.
//
//	go test -run '^$' -bench New -benchtime 9x ./sdk/throwawaypg/
func BenchmarkNew(b *testing.B) {
	for _, fast := range []bool{false, true} {
		name := "durable"
		if fast {
			name = "fast"
		}
		b.Run(name, func(b *testing.B) {
			var times []time.Duration
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				t0 := time.Now()
				s, err := New(ctx, Options{Fast: fast})
				elapsed := time.Since(t0)
				cancel()
				if errors.Is(err, ErrNotInstalled) {
					b.Skip(err)
				}
				if err != nil {
					b.Fatal(err)
				}
				times = append(times, elapsed)
				b.StopTimer()
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			slices.Sort(times)
			median := times[len(times)/2]
			b.ReportMetric(float64(median.Microseconds())/1000, "ms/start-median")
			b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "ms/start-max")
			b.Logf("%d starts: min %v, median %v, max %v", len(times), times[0].Round(time.Millisecond), median.Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
		})
	}
}
