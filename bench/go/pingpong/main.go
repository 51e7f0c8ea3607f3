// Go twin of bench/pingpong.cpp: a number bounced between two goroutines over two unbuffered
// channels.
// Usage: pingpong [round_trips=1000000] [procs=1]   prints "result pingpong<procs> <ns> ns"
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"time"
)

func main() {
	rounds := args.Int("pingpong", 1, 1_000_000, 1)
	procs := int(args.Int("pingpong", 2, 1, 1))
	runtime.GOMAXPROCS(procs)

	ping := make(chan int64)
	pong := make(chan int64)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
	}()
	start := time.Now()
	var v int64
	for i := int64(0); i < rounds; i++ {
		ping <- v
		v = <-pong
	}
	elapsed := time.Since(start)
	close(ping)
	if v != rounds {
		fmt.Fprintf(os.Stderr, "pingpong: got %d, want %d\n", v, rounds)
		os.Exit(1)
	}
	fmt.Printf("result pingpong%d %.2f ns\n", procs, float64(elapsed.Nanoseconds())/float64(rounds))
}
