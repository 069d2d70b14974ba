// khook run, producer, mapper and dispatcher: the stages, in one process or one each.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/khook/khook/app"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/telemetry"
)

func runCmd() *cobra.Command {
	return leaf("run", "run the whole pipeline in one process (embedded NATS unless --nats-url)", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, app.All)
		}
	})
}

func producerCmd() *cobra.Command {
	return leaf("producer", "run the enabled producer plugins of plugins.yaml", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		plugin := fs.String("plugin", "", "run only this plugin (one plugin per process)")
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, app.Stages{Producers: true, Plugin: *plugin})
		}
	})
}

func mapperCmd() *cobra.Command {
	return leaf("mapper", "run the mapping consumer", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, app.Stages{Mapper: true})
		}
	})
}

func dispatcherCmd() *cobra.Command {
	return leaf("dispatcher", "run the dispatch consumer", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, app.Stages{Dispatcher: true})
		}
	})
}

// runPipeline runs the chosen stages until SIGINT or SIGTERM, then drains and returns nil.
func runPipeline(ctx context.Context, common *commonFlags, st app.Stages) error {
	cfg, err := config.Load(common.config, environ(), common.overrides())
	if err != nil {
		return err
	}
	logger, err := telemetry.NewLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	if len(cfg.IgnoredEnv) > 0 {
		logger.Debug("ignoring the kubelet's Service link variables", zap.Strings("variables", cfg.IgnoredEnv))
	}
	ctx, stop := interruptible(ctx)
	defer stop()
	a, err := app.New(ctx, cfg, st, logger)
	if err != nil {
		return withoutConfig(common, err)
	}
	return a.Run(ctx)
}

// withoutConfig explains a missing file when no --config was given: the defaults name files
// in the working directory, which is rarely what a first run meant.
func withoutConfig(common *commonFlags, err error) error {
	if common.config != "" || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	wd, _ := os.Getwd()
	return fmt.Errorf("%w\n(no --config was given, so khook used its defaults, which read plugins.yaml, event-mappings.yaml "+
		"and hooks.yaml from the working directory %s; pass --config FILE, e.g. --config examples/local/khook.yaml, "+
		"or set files.plugins, files.mappings and files.hooks)", err, wd)
}
