// Go twin of bench/fib.cpp: fib(n) where every call above the cutoff hands fib(n-1) to a new
// goroutine, computes fib(n-2) itself and then waits for the child's result.
// Usage: fib [n=32] [procs=1] [cutoff=12]
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

func intArg(i int, def int64) int64 {
	if len(os.Args) <= i {
		return def
	}
	v, err := strconv.ParseInt(os.Args[i], 10, 64)
	if err != nil || v < 0 {
		fmt.Fprintf(os.Stderr, "fib: bad argument %q\n", os.Args[i])
		os.Exit(2)
	}
	return v
}

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
	n := int(intArg(1, 32))
	procs := int(intArg(2, 1))
	cutoff := int(intArg(3, 12))
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
