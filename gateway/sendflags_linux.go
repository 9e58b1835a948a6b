package gateway

import "syscall"

// lastFrameFlags holds the last frame back for the FIN (rawWriter.writeLast)
// and keeps a reset peer from raising SIGPIPE.
const lastFrameFlags = syscall.MSG_MORE | syscall.MSG_NOSIGNAL
