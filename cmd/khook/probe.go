package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// probeCmd is a healthcheck for images without curl: it exits 0 when the URL answers 200.
func probeCmd() *cobra.Command {
	cmd := leaf("probe URL", "exit 0 when URL answers 200 (container healthchecks)", cobra.ExactArgs(1), func(fs *pflag.FlagSet) runFunc {
		timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
		return func(ctx context.Context, args []string, stdout, _ io.Writer) error {
			ctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s %s", args[0], resp.Status, strings.TrimSpace(string(body)))
			}
			fmt.Fprintln(stdout, strings.TrimSpace(string(body)))
			return nil
		}
	})
	cmd.Example = "  khook probe http://localhost:8081/readyz"
	return cmd
}
