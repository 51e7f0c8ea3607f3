// Go twin of bench/timers.cpp: n time.AfterFunc timers (deadlines spread over 10 ms), each
// running its function in its own goroutine; ns per timer from first arm to last fire.
// Usage: timers [n=100000] [procs=2]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"runtime"
	"sync"
	"time"
)

func main() {
	n := args.Int("timers", 1, 100_000, 1)
	runtime.GOMAXPROCS(int(args.Int("timers", 2, 2, 1)))
	ts := make([]*time.Timer, 0, n)
	var wg sync.WaitGroup
	wg.Add(int(n))
	start := time.Now()
	for i := int64(0); i < n; i++ {
		ts = append(ts, time.AfterFunc(time.Duration(i%10_000)*time.Microsecond, wg.Done))
	}
	wg.Wait()
	el := time.Since(start)
	_ = ts
	fmt.Printf("result timers %.2f ns\n", float64(el.Nanoseconds())/float64(n))
}
