// khook status: streams, consumers, dead letters, plugins and hooks.

package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/app"
)

func statusCmd() *cobra.Command {
	return leaf("status", "show the streams, consumers, dead letters, plugins, hooks and what became of the last hour's events", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		output := addOutput(fs, "table", "json", "yaml")
		window := fs.Duration("window", app.DefaultStatusWindow, "count each Hook's outcomes (matched, delivered, suppressed, grouped, dead-lettered) over this window; 0 to leave them out")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			if *window < 0 {
				return usageError{fmt.Errorf("--window: want a duration of 0 or more, got %s", *window)}
			}
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			idx, err := s.hooks(ctx)
			if err != nil {
				// Status is for troubleshooting: a broken hooks source is reported, not fatal.
				fmt.Fprintf(stderr, "hooks: %v\n", err)
			}
			st, err := app.Status(ctx, s.js, s.cfg, idx, *window)
			if err != nil {
				return err
			}
			return writeAs(stdout, output.value, st, st.WriteTable)
		}
	})
}
