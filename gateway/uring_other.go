//go:build !linux

package gateway

import "errors"

// uring is Linux's; elsewhere every socket gets its own write.
type uring struct{ uringScratch }

func (*uring) Send([]int32, [][]byte, []int32) error { return errUringUnsupported }

var errUringUnsupported = errors.New("io_uring is Linux only")

func getURing() *uring   { return nil }
func putURing(*uring)    {}
func dropURing(*uring)   {}
func uringUsable() error { return errUringUnsupported }
