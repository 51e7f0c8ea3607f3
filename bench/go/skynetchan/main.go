// Go twin of bench/skynetchan.cpp (the same program as bench/go/skynet): every node starts its
// children as goroutines and adds up what they send on the node's own channel.
// Usage: skynetchan [leaves=1000000] [procs=2]   (leaves must be a power of 10)
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"time"
)

const fanout = 10

func skynet(out chan<- int64, num, size int64) {
	if size == 1 {
		out <- num
		return
	}
	in := make(chan int64)
	sub := size / fanout
	for i := int64(0); i < fanout; i++ {
		go skynet(in, num+i*sub, sub)
	}
	var sum int64
	for i := 0; i < fanout; i++ {
		sum += <-in
	}
	out <- sum
}

func main() {
	leaves := args.Int("skynetchan", 1, 1_000_000, 1)
	procs := int(args.Int("skynetchan", 2, 2, 1))
	runtime.GOMAXPROCS(procs)
	for p := leaves; p > 1; p /= fanout {
		if p%fanout != 0 {
			fmt.Fprintf(os.Stderr, "skynetchan: leaves (%d) must be a power of %d\n", leaves, fanout)
			os.Exit(2)
		}
	}

	start := time.Now()
	out := make(chan int64)
	go skynet(out, 0, leaves)
	sum := <-out
	elapsed := time.Since(start)

	if want := leaves * (leaves - 1) / 2; sum != want {
		fmt.Fprintf(os.Stderr, "skynetchan: sum %d, want %d\n", sum, want)
		os.Exit(1)
	}
	fmt.Printf("result skynetchan %.2f ms\n", float64(elapsed.Nanoseconds())/1e6)
}
