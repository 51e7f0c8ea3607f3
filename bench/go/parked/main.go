// Go twin of bench/parked.cpp: resident memory added per goroutine while N goroutines sit
// blocked in sync.WaitGroup.Wait.
// Usage: parked [n=100000] [procs=2]
package main

import (
	"bytes"
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// statm rather than getrusage: ru_maxrss is a high-water mark, and we want the current value.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		fmt.Fprintf(os.Stderr, "parked: %v\n", err)
		os.Exit(1)
	}
	f := bytes.Fields(b)
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parked: bad statm %q\n", b)
		os.Exit(1)
	}
	return pages * int64(os.Getpagesize())
}

// The name carries the count so that 100k and 1M runs stay apart in the harness's table.
func label(n int64) string {
	switch {
	case n%1_000_000 == 0:
		return fmt.Sprintf("parked%dm", n/1_000_000)
	case n%1_000 == 0:
		return fmt.Sprintf("parked%dk", n/1_000)
	}
	return fmt.Sprintf("parked%d", n)
}

func main() {
	n := args.Int("parked", 1, 100_000, 1)
	procs := int(args.Int("parked", 2, 2, 1))
	runtime.GOMAXPROCS(procs)

	var started, release, finished sync.WaitGroup
	started.Add(int(n))
	finished.Add(int(n))
	release.Add(1)

	before := rssBytes()
	for i := int64(0); i < n; i++ {
		go func() {
			started.Done()
			release.Wait()
			finished.Done()
		}()
	}
	started.Wait()
	// started only proves each goroutine got as far as Done; give the last few the moment
	// they need to reach Wait and park, so every one of them is counted parked.
	time.Sleep(20 * time.Millisecond)
	after := rssBytes()

	release.Done()
	finished.Wait()
	fmt.Printf("result %s %d bytes\n", label(n), (after-before)/n)
}
