// Go twin of bench/spawn.cpp: start N goroutines that only signal a WaitGroup; the time
// includes waiting for the last one, so a runtime that defers the work cannot look cheap.
// Usage: spawn [n=1000000] [procs=2]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"runtime"
	"sync"
	"time"
)

func main() {
	n := args.Int("spawn", 1, 1_000_000, 1)
	procs := int(args.Int("spawn", 2, 2, 1))
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
