// khook streams apply: the JetStream topology khook.yaml describes.

package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/app"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/streams"
)

func streamsCmd() *cobra.Command {
	apply := leaf("apply", "create or update the streams, consumers and buckets khook.yaml describes", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		dryRun := fs.Bool("dry-run", false, "say what would change, setting by setting, and change nothing")
		output := addOutput(fs, "text", "json", "yaml")
		return func(ctx context.Context, _ []string, stdout, _ io.Writer) error {
			cfg, err := config.Load(common.config, environ(), common.opsOverrides())
			if err != nil {
				return err
			}
			nc, js, err := app.Connect(cfg)
			if err != nil {
				return err
			}
			defer nc.Close()
			do := streams.Apply
			if *dryRun {
				do = streams.Plan
			}
			changes, err := do(ctx, js, cfg.Streams)
			if changes == nil {
				changes = []streams.Change{}
			}
			// What was done is printed even when a later object failed.
			if werr := writeAs(stdout, output.value, changes, func(w io.Writer) error {
				for _, c := range changes {
					fmt.Fprintln(w, c)
				}
				return nil
			}); werr != nil {
				return werr
			}
			return err
		}
	})
	apply.Long = `Create or update the streams, consumers and buckets khook.yaml describes. Settings khook
does not manage are kept as the server has them. An update lists each setting it changes;
a shorter max_age or a smaller max_bytes or max_msgs deletes messages at once, so run
--dry-run first to see what would change.`
	return group("streams", "manage the JetStream streams, consumers and buckets", apply)
}
