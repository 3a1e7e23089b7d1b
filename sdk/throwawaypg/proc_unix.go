//go:build unix

package throwawaypg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// serverUser is the OS account the server runs as when this process is root:
// PostgreSQL refuses to run as root.
const serverUser = "postgres"

// account describes the OS user that runs initdb, pg_ctl and postgres.
type account struct {
	name string
	uid  uint32
	gid  uint32
	gids []uint32            // primary and supplementary groups
	cred *syscall.Credential // nil: run as the current user
}

// currentAccount returns the account to run the server as: the current user,
// or the "postgres" user when running as root.
func currentAccount() (*account, error) {
	return accountFor(os.Geteuid(), os.Getegid(), serverUser)
}

// accountFor returns the account for a process with the given effective
// ids: itself, or the OS user named userName if euid is root.
func accountFor(euid, egid int, userName string) (*account, error) {
	if euid != 0 {
		return &account{name: "current user", uid: uint32(euid), gid: uint32(egid)}, nil
	}
	u, err := user.Lookup(userName)
	if err != nil {
		return nil, fmt.Errorf("throwawaypg: running as root, and PostgreSQL refuses to run as root, so the server must run as the OS user %q, but looking it up failed: %w (create that user, e.g. with \"useradd --system --user-group %s\" or by installing the postgresql package, or run as a non-root user)", userName, err, userName)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("throwawaypg: OS user %q: %w", userName, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("throwawaypg: OS user %q has uid 0; PostgreSQL refuses to run as root", userName)
	}
	a := &account{name: userName, uid: uint32(uid), gid: uint32(gid), gids: []uint32{uint32(gid)}}
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(g) != a.gid {
				groups = append(groups, uint32(g))
			}
		}
	}
	a.gids = append(a.gids, groups...)
	a.cred = &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: groups}
	return a, nil
}

// switched reports whether child processes run as a different user.
func (a *account) switched() bool { return a.cred != nil }

// apply makes cmd run as the account.
func (a *account) apply(cmd *exec.Cmd) {
	if a.cred == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = a.cred
}

// chown gives path to the account (only when switching users).
func (a *account) chown(path string) error {
	if a.cred == nil {
		return nil
	}
	return os.Chown(path, int(a.uid), int(a.gid))
}

// checkTraversable verifies that the account can reach dir, i.e. has search
// permission on dir and every parent directory. It only matters when
// switching users: a directory made by os.MkdirTemp (such as t.TempDir())
// is mode 0700 and owned by root, so the postgres user cannot enter it.
func (a *account) checkTraversable(dir string) error {
	if a.cred == nil {
		return nil
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !a.canSearch(fi) {
			return fmt.Errorf("throwawaypg: directory %s (mode %v) is not accessible to the OS user %q that runs the server: choose a parent directory it can reach, e.g. /tmp", p, fi.Mode().Perm(), a.name)
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

func (a *account) canSearch(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // cannot tell; let the server report it
	}
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == a.uid:
		return perm&0o100 != 0
	case containsGID(a.gids, st.Gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

func containsGID(gids []uint32, gid uint32) bool {
	for _, g := range gids {
		if g == gid {
			return true
		}
	}
	return false
}

// processAlive reports whether a process with the given id exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// watchdogScript waits until its stdin reaches EOF, which happens when the
// process that started it exits for any reason (even SIGKILL), then stops
// the server and removes its directory. Arguments: $1 pg_ctl, $2 data
// directory, $3 directory to remove.
const watchdogScript = `trap '' HUP INT QUIT TERM PIPE
while read -r _; do :; done
"$1" stop -D "$2" -m immediate -w -t 30 >/dev/null 2>&1
rm -rf "$3"
`

// watchdog is a small shell process that cleans up the server if this
// process dies without calling Close.
type watchdog struct {
	cmd *exec.Cmd
	// fd is the write end of the watchdog's stdin. It is a raw descriptor
	// rather than an *os.File so that no finalizer closes it (and so fires
	// the watchdog) if the Server is garbage collected without Close: the
	// kernel closes it when this process exits.
	fd int
}

// startWatchdog starts the watchdog for the server in dataDir, which lives
// in dir. It runs as the server's account, in its own process group so that
// a Ctrl-C aimed at the test process does not kill it before it can act.
func startWatchdog(acct *account, pgCtl, dataDir, dir string) (*watchdog, error) {
	const sh = "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		return nil, err
	}
	var p [2]int
	syscall.ForkLock.RLock() // no fork may inherit the descriptors before they are close-on-exec
	err := syscall.Pipe(p[:])
	if err == nil {
		syscall.CloseOnExec(p[0])
		syscall.CloseOnExec(p[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, err
	}
	r := os.NewFile(uintptr(p[0]), "watchdog-stdin")
	cmd := exec.Command(sh, "-c", watchdogScript, "throwawaypg-watchdog", pgCtl, dataDir, dir)
	cmd.Stdin = r
	cmd.Dir = "/"
	cmd.Env = childEnv(dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	acct.apply(cmd)
	err = cmd.Start()
	r.Close()
	if err != nil {
		syscall.Close(p[1])
		return nil, err
	}
	return &watchdog{cmd: cmd, fd: p[1]}, nil
}

// disarm ends the watchdog without letting it act.
func (w *watchdog) disarm() {
	if w == nil {
		return
	}
	_ = w.cmd.Process.Kill()
	_ = w.cmd.Wait()
	_ = syscall.Close(w.fd)
}
