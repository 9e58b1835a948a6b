//go:build unix && !linux

package gateway

// lastFrameFlags: without MSG_MORE the last frame and the FIN leave in two
// segments, as they would after a write and a close.
const lastFrameFlags = 0
