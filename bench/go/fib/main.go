// Go twin of bench/fib.cpp: fib(n) where every call above the cutoff hands fib(n-1) to a new
// goroutine, computes fib(n-2) itself and then waits for the child's result.
// Usage: fib [n=32] [procs=1] [cutoff=12]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"time"
)

func fibSerial(n int) int64 {
	if n < 2 {
		return int64(n)
	}
	return fibSerial(n-1) + fibSerial(n-2)
}

func fib(n, cutoff int) int64 {
	if n <= cutoff {
		return fibSerial(n)
	}
	// Buffered so the child can finish without waiting for the parent to reach the receive,
	// as a gort task stores its result and exits.
	ch := make(chan int64, 1)
	go func() { ch <- fib(n-1, cutoff) }()
	b := fib(n-2, cutoff)
	return <-ch + b
}

func main() {
	n := int(args.Int("fib", 1, 32, 0))
	procs := int(args.Int("fib", 2, 1, 0))
	cutoff := int(args.Int("fib", 3, 12, 0))
	if procs < 1 {
		procs = 1
	}
	runtime.GOMAXPROCS(procs)

	start := time.Now()
	got := fib(n, cutoff)
	elapsed := time.Since(start)

	var a, b int64 = 0, 1
	for i := 0; i < n; i++ {
		a, b = b, a+b
	}
	if got != a {
		fmt.Fprintf(os.Stderr, "fib: fib(%d) = %d, want %d\n", n, got, a)
		os.Exit(1)
	}
	fmt.Printf("result fib%d %.2f ms\n", procs, float64(elapsed.Nanoseconds())/1e6)
}
