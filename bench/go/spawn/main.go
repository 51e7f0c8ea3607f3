// Go twin of bench/spawn.cpp: start N goroutines that only signal a WaitGroup; the time
// includes waiting for the last one, so a runtime that defers the work cannot look cheap.
// Usage: spawn [n=1000000] [procs=2]
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

func intArg(i int, def int64) int64 {
	if len(os.Args) <= i {
		return def
	}
	v, err := strconv.ParseInt(os.Args[i], 10, 64)
	if err != nil || v <= 0 {
		fmt.Fprintf(os.Stderr, "spawn: bad argument %q\n", os.Args[i])
		os.Exit(2)
	}
	return v
}

func main() {
	n := intArg(1, 1_000_000)
	procs := int(intArg(2, 2))
	runtime.GOMAXPROCS(procs)

	var wg sync.WaitGroup
	wg.Add(int(n))
	start := time.Now()
	for i := int64(0); i < n; i++ {
		go func() { wg.Done() }()
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Printf("result spawn %.2f ns\n", float64(elapsed.Nanoseconds())/float64(n))
}
