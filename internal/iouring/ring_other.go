//go:build !linux

package iouring

import (
	"errors"
	"math"
)

// Ring is Linux's; elsewhere New fails.
type Ring struct{}

// NoAnswer marks an operation the kernel has not answered.
const NoAnswer = math.MinInt32

// ErrUnsupported is New's error outside Linux.
var ErrUnsupported = errors.New("io_uring is Linux only")

func New(uint32) (*Ring, error)                     { return nil, ErrUnsupported }
func (*Ring) Entries() uint32                       { return 0 }
func (*Ring) Send([]int32, [][]byte, []int32) error { return ErrUnsupported }
func (*Ring) Recv([]int32, [][]byte, []int32) error { return ErrUnsupported }
func (*Ring) Close()                                {}
