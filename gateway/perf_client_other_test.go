//go:build !linux

package gateway

import (
	"testing"
	"time"
)

// processCPU is only read on Linux (from /proc); elsewhere the benchmarks
// report the server's CPU alone.
func processCPU(testing.TB, int) (time.Duration, bool) { return 0, false }
