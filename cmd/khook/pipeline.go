// khook run, producer, mapper and dispatcher: the stages, in one process or one each.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"

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
		profile := addProfileFlag(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, *profile, app.All)
		}
	})
}

func edgeCmd() *cobra.Command {
	return leaf("edge", "run one cluster's producers, storing events at the edge and forwarding them to the hub (a NATS leaf node)", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		profile := addProfileFlag(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, *profile, app.Edge)
		}
	})
}

func producerCmd() *cobra.Command {
	return leaf("producer", "run the enabled producer plugins of plugins.yaml", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		plugin := fs.String("plugin", "", "run only this plugin (one plugin per process)")
		profile := addProfileFlag(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, *profile, app.Stages{Producers: true, Plugin: *plugin})
		}
	})
}

func mapperCmd() *cobra.Command {
	return leaf("mapper", "run the mapping consumer", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		profile := addProfileFlag(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, *profile, app.Stages{Mapper: true})
		}
	})
}

func dispatcherCmd() *cobra.Command {
	return leaf("dispatcher", "run the dispatch consumer", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		profile := addProfileFlag(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, *profile, app.Stages{Dispatcher: true})
		}
	})
}

// addProfileFlag is --cpuprofile, hidden: a developer's and the benchmark's way to see where
// a stage spends its CPU (go tool pprof FILE), written when the stage stops.
func addProfileFlag(fs *pflag.FlagSet) *string {
	p := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	_ = fs.MarkHidden("cpuprofile")
	return p
}

// runPipeline runs the chosen stages until SIGINT or SIGTERM, then drains and returns nil.
func runPipeline(ctx context.Context, common *commonFlags, cpuprofile string, st app.Stages) error {
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	cfg, err := config.Load(common.config, environ(), common.overrides())
	if err != nil {
		return err
	}
	if st.Edge {
		if err := cfg.ValidateEdge(); err != nil {
			return err
		}
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
