// Go twin of bench/yield.cpp: two goroutines taking turns through runtime.Gosched().
// Usage: yield [total_yields=10000000] [procs=1]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"runtime"
	"sync"
	"time"
)

func main() {
	total := args.Int("yield", 1, 10_000_000, 1)
	procs := int(args.Int("yield", 2, 1, 1))
	runtime.GOMAXPROCS(procs)

	per := total / 2
	var wg sync.WaitGroup
	wg.Add(2)
	start := time.Now()
	for g := 0; g < 2; g++ {
		go func() {
			for i := int64(0); i < per; i++ {
				runtime.Gosched()
			}
			wg.Done()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Printf("result yield %.2f ns\n", float64(elapsed.Nanoseconds())/float64(2*per))
}
