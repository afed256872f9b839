// Checks a Prometheus text exposition on stdin the way `promtool check
// metrics` does: parse it with Prometheus's own text parser (expfmt) and
// run the same lint rules (promlint). Prints one problem per line; exits 1
// when the text does not parse, 3 when a lint rule fails, 0 when clean.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintf(os.Stderr, "parse error: %v\n", err)
		os.Exit(1)
	}
	for _, p := range problems {
		fmt.Printf("%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(3)
	}
}
