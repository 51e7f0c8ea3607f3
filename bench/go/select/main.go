// Go twin of bench/select.cpp: 4 producers each feed their own buffered channel (capacity 16)
// and the main goroutine takes every value with a select over the 4 channels; ns per select.
// Usage: select [selects=2000000] [procs=2]
package main

import (
	"fmt"
	"gortbench/internal/args"
	"os"
	"runtime"
	"time"
)

func main() {
	total := args.Int("select", 1, 2_000_000, 1)
	procs := int(args.Int("select", 2, 2, 1))
	runtime.GOMAXPROCS(procs)
	const k = 4

	per := total / k
	var ch [k]chan int64
	for i := range ch {
		ch[i] = make(chan int64, 16)
	}
	start := time.Now()
	for p := 0; p < k; p++ {
		go func(c chan int64) {
			for i := int64(1); i <= per; i++ {
				c <- i
			}
		}(ch[p])
	}
	var sum int64
	for n := int64(0); n < per*k; n++ {
		select {
		case v := <-ch[0]:
			sum += v
		case v := <-ch[1]:
			sum += v
		case v := <-ch[2]:
			sum += v
		case v := <-ch[3]:
			sum += v
		}
	}
	elapsed := time.Since(start)
	if want := k * per * (per + 1) / 2; sum != want {
		fmt.Fprintf(os.Stderr, "select: sum %d, want %d\n", sum, want)
		os.Exit(1)
	}
	fmt.Printf("result select %.2f ns\n", float64(elapsed.Nanoseconds())/float64(per*k))
}
