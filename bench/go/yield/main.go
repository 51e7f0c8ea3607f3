// Go twin of bench/yield.cpp: two goroutines taking turns through runtime.Gosched().
// Usage: yield [total_yields=10000000] [procs=1]
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
		fmt.Fprintf(os.Stderr, "yield: bad argument %q\n", os.Args[i])
		os.Exit(2)
	}
	return v
}

func main() {
	total := intArg(1, 10_000_000)
	procs := int(intArg(2, 1))
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
