// Go twin of bench/lateness.cpp: a goroutine spins with no calls while another sleeps 1 ms,
// `rounds` times; prints the median and maximum lateness of the wake-ups.
// Usage: lateness [rounds=50] [procs=1]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	rounds := args.Int("lateness", 1, 50, 1)
	procs := int(args.Int("lateness", 2, 1, 1))
	runtime.GOMAXPROCS(procs)

	var stop atomic.Bool
	var late []float64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		for !stop.Load() {
		}
		wg.Done()
	}()
	go func() {
		for i := int64(0); i < rounds; i++ {
			t0 := time.Now()
			time.Sleep(time.Millisecond)
			late = append(late, float64(time.Since(t0).Nanoseconds())/1e6-1.0)
		}
		stop.Store(true)
		wg.Done()
	}()
	wg.Wait()
	sort.Float64s(late)
	fmt.Printf("result lateness %.3f ms\n", late[len(late)/2])
	fmt.Printf("result lateness_max %.3f ms\n", late[len(late)-1])
}
