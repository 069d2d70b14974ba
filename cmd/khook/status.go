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
	return leaf("status", "show the streams, consumers, dead letters, plugins and hooks", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
			st, err := app.Status(ctx, s.js, s.cfg, idx)
			if err != nil {
				return err
			}
			return writeAs(stdout, output.value, st, st.WriteTable)
		}
	})
}
