// khook version.

package main

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func versionLine() string {
	return fmt.Sprintf("khook %s (%s, %s/%s)", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func versionCmd() *cobra.Command {
	return leaf("version", "print the version", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		output := addOutput(fs, "text", "json", "yaml")
		return func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			v := struct {
				Version string `json:"version"`
				Go      string `json:"go"`
				OS      string `json:"os"`
				Arch    string `json:"arch"`
			}{version, runtime.Version(), runtime.GOOS, runtime.GOARCH}
			return writeAs(stdout, output.value, v, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, versionLine())
				return err
			})
		}
	})
}
