package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteTable writes the results as an aligned table.
func WriteTable(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tn\tseconds\tper second\tspawn s\tp50 ms\tp99 ms\tworker RSS MB\tworker CPU s\tserver CPU s\tcost ratio\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.N, r.Seconds, r.PerSecond,
			opt(r.SpawnSeconds, "%.3f"), opt(r.P50ms, "%.2f"), opt(r.P99ms, "%.2f"), opt(r.RSSMB, "%.0f"),
			opt(r.WorkerCPU, "%.2f"), opt(r.ServerCPU, "%.2f"), opt(r.CostRatio, "%.2f"))
	}
	_ = tw.Flush()
}

func opt(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

// WriteJSON writes one JSON line per result.
func WriteJSON(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}
