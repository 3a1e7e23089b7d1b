package throwawaypg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNotInstalled is returned (wrapped, with details and installation hints)
// by [New] when the PostgreSQL server binaries initdb, pg_ctl and postgres
// cannot be found. Test helpers may check for it with errors.Is to skip tests
// on machines without PostgreSQL.
var ErrNotInstalled = errors.New("throwawaypg: PostgreSQL is not installed")

// defaultGlob is where Debian and Ubuntu install the server binaries of each
// major version; they are usually not on PATH there.
const defaultGlob = "/usr/lib/postgresql/*/bin"

const installHint = `install them with "apt-get install postgresql" (Debian/Ubuntu) or "brew install postgresql" (macOS), or point Options.BinDir at the directory that holds them`

// binaries holds the absolute paths of the server programs this package runs.
type binaries struct {
	initdb   string
	pgCtl    string
	postgres string
}

var binaryNames = [...]string{"initdb", "pg_ctl", "postgres"}

// findBinaries locates initdb, pg_ctl and postgres. If binDir is set only
// that directory is considered. Otherwise each program is looked up in
// pathEnv (a PATH-style list) and, failing that, the directories matching
// glob are tried, the highest PostgreSQL major version first. It has no
// dependency on the process environment so it can be tested in isolation.
func findBinaries(binDir, pathEnv, glob string) (binaries, error) {
	if binDir != "" {
		b, missing := binariesIn(binDir)
		if len(missing) > 0 {
			return binaries{}, fmt.Errorf("%w: %s not found in Options.BinDir %q: %s",
				ErrNotInstalled, strings.Join(missing, ", "), binDir, installHint)
		}
		return b, nil
	}

	// PATH first: each program on its own.
	var found [len(binaryNames)]string
	complete := true
	for i, name := range binaryNames {
		found[i] = lookPath(name, pathEnv)
		if found[i] == "" {
			complete = false
		}
	}
	if complete {
		return binaries{initdb: found[0], pgCtl: found[1], postgres: found[2]}, nil
	}

	// Then the versioned directories, newest major version first.
	for _, dir := range versionDirs(glob) {
		if b, missing := binariesIn(dir); len(missing) == 0 {
			return b, nil
		}
	}
	return binaries{}, fmt.Errorf("%w: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under %s: %s",
		ErrNotInstalled, glob, installHint)
}

// binariesIn returns the programs found in dir and the names of the missing ones.
func binariesIn(dir string) (binaries, []string) {
	var paths [len(binaryNames)]string
	var missing []string
	for i, name := range binaryNames {
		p := filepath.Join(dir, name)
		if isExecutable(p) {
			paths[i] = absPath(p)
		} else {
			missing = append(missing, name)
		}
	}
	return binaries{initdb: paths[0], pgCtl: paths[1], postgres: paths[2]}, missing
}

// lookPath is exec.LookPath with an explicit PATH. Empty and relative PATH
// entries are ignored, as exec.LookPath refuses them too.
func lookPath(name, pathEnv string) string {
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// versionDirs expands glob (whose second-to-last element is the version,
// as in /usr/lib/postgresql/15/bin) and orders the matches by descending
// numeric version, so 15 comes before 9.6 and 10 before 9.6.
func versionDirs(glob string) []string {
	dirs, err := filepath.Glob(glob)
	if err != nil {
		return nil
	}
	slices.SortStableFunc(dirs, func(a, b string) int {
		return compareVersions(versionOf(b), versionOf(a))
	})
	return dirs
}

func versionOf(binDir string) []int {
	var v []int
	for part := range strings.SplitSeq(filepath.Base(filepath.Dir(binDir)), ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil // not a version: sorts last
		}
		v = append(v, n)
	}
	return v
}

func compareVersions(a, b []int) int {
	return slices.Compare(a, b)
}
