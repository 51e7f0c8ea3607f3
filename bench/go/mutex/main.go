// Go twin of bench/mutex.cpp: contended sync.Mutex, ns per lock/unlock pair.
// Usage: mutex [gs=100] [iters_per_g=100000] [procs=2]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"sync"
	"time"
)

func main() {
	ng := args.Int("mutex", 1, 100, 1)
	per := args.Int("mutex", 2, 100_000, 1)
	runtime.GOMAXPROCS(int(args.Int("mutex", 3, 2, 1)))
	var mu sync.Mutex
	var counter int64
	var wg sync.WaitGroup
	wg.Add(int(ng))
	start := time.Now()
	for g := int64(0); g < ng; g++ {
		go func() {
			for i := int64(0); i < per; i++ {
				mu.Lock()
				counter++
				mu.Unlock()
			}
			wg.Done()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if counter != ng*per {
		fmt.Fprintln(os.Stderr, "mutex: lost increments")
		os.Exit(1)
	}
	fmt.Printf("result mutex %.2f ns\n", float64(el.Nanoseconds())/float64(ng*per))
}
