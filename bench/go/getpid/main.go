// Go twin of bench/getpid.cpp: syscall.Syscall(SYS_GETPID) in a loop, which goes through
// entersyscall/exitsyscall like gort::blocking; ns per call.
// Usage: getpid [calls=10000000] [procs=1]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"syscall"
	"time"
)

func main() {
	calls := args.Int("getpid", 1, 10_000_000, 1)
	procs := int(args.Int("getpid", 2, 1, 1))
	runtime.GOMAXPROCS(procs)

	var sum int64
	start := time.Now()
	for i := int64(0); i < calls; i++ {
		pid, _, _ := syscall.Syscall(syscall.SYS_GETPID, 0, 0, 0)
		sum += int64(pid)
	}
	elapsed := time.Since(start)
	if sum != calls*int64(os.Getpid()) {
		os.Exit(1)
	}
	fmt.Printf("result getpid %.2f ns\n", float64(elapsed.Nanoseconds())/float64(calls))
}
