//go:build !unix

package throwawaypg

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
)

type account struct{ name string }

func currentAccount() (*account, error) {
	return nil, fmt.Errorf("throwawaypg: %s is not supported: %w", runtime.GOOS, errors.ErrUnsupported)
}

func (a *account) switched() bool                { return false }
func (a *account) apply(*exec.Cmd)               {}
func (a *account) chown(string) error            { return nil }
func (a *account) checkTraversable(string) error { return nil }
func processAlive(pid int) bool {
	_, err := os.FindProcess(pid)
	return err == nil
}

type watchdog struct{}

func startWatchdog(*account, string, string, string) (*watchdog, error) {
	return nil, errors.ErrUnsupported
}

func (w *watchdog) disarm() {}
