// Package args reads the positional integer arguments of the benchmark twins; a bad one exits
// with status 2 and a message, which tools/bench reports as a failed run.
package args

import (
	"fmt"
	"os"
	"strconv"
)

// Int returns os.Args[i] as an integer of at least min, or def when it is absent.
func Int(prog string, i int, def, min int64) int64 {
	if len(os.Args) <= i {
		return def
	}
	v, err := strconv.ParseInt(os.Args[i], 10, 64)
	if err != nil || v < min {
		fmt.Fprintf(os.Stderr, "%s: bad argument %q\n", prog, os.Args[i])
		os.Exit(2)
	}
	return v
}
