package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// serverCPU returns the CPU seconds (user+system) used so far by a
// PostgreSQL server's processes: the postmaster named in dataDir's
// postmaster.pid and its children. It returns -1 when that cannot be read
// (another operating system, or a server the benchmark did not start).
func serverCPU(dataDir string) float64 {
	if dataDir == "" {
		return -1
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return -1
	}
	postmaster, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return -1
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return -1
	}
	const ticks = 100 // USER_HZ on Linux
	var total float64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command name (which is in parentheses and may
		// hold spaces): state ppid ... utime (14th) stime (15th).
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		if pid != postmaster && ppid != postmaster {
			continue
		}
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		total += (utime + stime) / ticks
	}
	return total
}

// peakRSS returns a process's peak resident set size in MB since it
// started its program (VmHWM in /proc/PID/status), and whether it could be
// read (it cannot on other operating systems).
func peakRSS(pid int) (float64, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, false
			}
			return kb / 1024, true
		}
	}
	return 0, false
}
