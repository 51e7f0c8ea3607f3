// Go twin of bench/chanthru.cpp: 4 producers and 4 consumers on one channel of capacity 128,
// reported as ns per message.
// Usage: chanthru [messages=4000000] [procs=2]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	total := args.Int("chanthru", 1, 4_000_000, 1)
	procs := int(args.Int("chanthru", 2, 2, 1))
	runtime.GOMAXPROCS(procs)
	const producers, consumers, capacity = 4, 4, 128

	per := total / producers
	ch := make(chan int64, capacity)
	var prod, cons sync.WaitGroup
	var sum atomic.Int64
	prod.Add(producers)
	cons.Add(consumers)
	start := time.Now()
	for p := int64(0); p < producers; p++ {
		go func(p int64) {
			for i := int64(0); i < per; i++ {
				ch <- p*per + i
			}
			prod.Done()
		}(p)
	}
	for c := 0; c < consumers; c++ {
		go func() {
			var s int64
			for v := range ch {
				s += v
			}
			sum.Add(s)
			cons.Done()
		}()
	}
	prod.Wait()
	close(ch)
	cons.Wait()
	elapsed := time.Since(start)
	n := per * producers
	if sum.Load() != n*(n-1)/2 {
		fmt.Fprintf(os.Stderr, "chanthru: sum %d, want %d\n", sum.Load(), n*(n-1)/2)
		os.Exit(1)
	}
	fmt.Printf("result chanthru %.2f ns\n", float64(elapsed.Nanoseconds())/float64(n))
}
