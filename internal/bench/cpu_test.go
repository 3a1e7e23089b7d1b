package bench

import (
	"os"
	"runtime"
	"testing"
)

func TestPeakRSSOfThisProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	mb, ok := peakRSS(os.Getpid())
	if !ok || mb <= 0 || mb > 64*1024 {
		t.Fatalf("peakRSS = %v MB, %v; want a positive size", mb, ok)
	}
	if _, ok := peakRSS(-1); ok {
		t.Fatal("peakRSS of no process reported a size")
	}
}
