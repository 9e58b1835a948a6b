package main

import (
	"math/bits"
	"time"
)

// hist is a log-linear histogram of microseconds: exact below 64 µs,
// then 32 buckets per power of two (about 3% wide). A run can hold tens
// of millions of deliveries; sorting them all would cost more than the
// answer is worth.
type hist struct {
	counts [64 + 32*58]int64
	n      int64
	max    int64
}

func (h *hist) add(us int64) {
	us = max(us, 0)
	h.counts[bucket(us)]++
	h.n++
	h.max = max(h.max, us)
}

func bucket(v int64) int {
	if v < 64 {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - 6
	return 64 + (shift-1)*32 + int(v>>shift) - 32
}

// upper is the largest value bucket i holds.
func upper(i int) int64 {
	if i < 64 {
		return int64(i)
	}
	shift := (i-64)/32 + 1
	return (int64((i-64)%32+32)+1)<<shift - 1
}

// quantile returns the value below which a fraction q of the samples lie
// (the upper edge of its bucket, never above the maximum seen).
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(upper(i), h.max)) * time.Microsecond
		}
	}
	return time.Duration(h.max) * time.Microsecond
}

// quantiles is what reports show of a distribution, in milliseconds.
type quantiles struct {
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	N   int64   `json:"n"`
}

func (h *hist) quantiles() quantiles {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return quantiles{P50: ms(h.quantile(0.5)), P90: ms(h.quantile(0.9)), P99: ms(h.quantile(0.99)),
		Max: ms(time.Duration(h.max) * time.Microsecond), N: h.n}
}
