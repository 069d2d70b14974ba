package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/khook/khook/producers"
)

// pluginToggle is where `khook plugins disable|enable` edits plugins.yaml.
type pluginToggle struct {
	common                          *commonFlags
	file, configMap, namespace, key *string
	dryRun                          *bool
}

// pluginsCmd is `khook plugins disable|enable NAME`: the one-plugin rollback. It edits one
// entry of plugins.yaml, in a file or in the ConfigMap the producers mount, and leaves every
// other plugin running; the producers apply the change live.
func pluginsCmd() *cobra.Command {
	verb := func(verb, short string) *cobra.Command {
		cmd := leaf(verb+" NAME", short, cobra.ExactArgs(1), func(fs *pflag.FlagSet) runFunc {
			o := &pluginToggle{
				common:    addCommonFlags(fs),
				file:      fs.String("file", "", "a plugins.yaml file to edit in place"),
				configMap: fs.String("configmap", "", "a ConfigMap holding plugins.yaml, e.g. khook-plugin-config"),
				namespace: fs.StringP("namespace", "n", "", "the ConfigMap's namespace (default: the kubeconfig context's, else $POD_NAMESPACE)"),
				key:       fs.String("key", "plugins.yaml", "the ConfigMap key holding plugins.yaml"),
				dryRun:    fs.Bool("dry-run", false, "print the edited plugins.yaml and change nothing"),
			}
			return func(ctx context.Context, args []string, stdout, _ io.Writer) error {
				if (*o.file == "") == (*o.configMap == "") {
					return usageError{errors.New("give either --file PLUGINS.yaml or --configmap NAME")}
				}
				return togglePlugin(ctx, o, verb, args[0], stdout)
			}
		})
		cmd.Example = fmt.Sprintf("  khook plugins %s kubernetes --configmap khook-plugin-config --namespace kagent\n  khook plugins %s webhook --file plugins.yaml --dry-run", verb, verb)
		return cmd
	}
	return group("plugins", "roll one plugin back (or forward), leaving the others running",
		verb("disable", "disable one plugin in plugins.yaml"), verb("enable", "enable one plugin in plugins.yaml"))
}

func togglePlugin(ctx context.Context, o *pluginToggle, verb, name string, stdout io.Writer) error {
	file, configMap, namespace, key, dryRun, common := o.file, o.configMap, o.namespace, o.key, o.dryRun, o.common
	enabled := verb == "enable"
	edit := func(b []byte) ([]byte, error) {
		out, err := producers.SetEnabled(b, name, enabled)
		if err != nil {
			return nil, err
		}
		if *dryRun {
			_, _ = stdout.Write(out)
		}
		return out, nil
	}
	if *file != "" {
		b, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		out, err := edit(b)
		if err != nil || *dryRun {
			return err
		}
		if err := writeFileAtomic(*file, out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "plugin %s %sd in %s\n", name, verb, *file)
		return nil
	}

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if common.kubeconfig != "" {
		rules.ExplicitPath = common.kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubernetes: %w", err)
	}
	ns := *namespace
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil || ns == "" {
			ns = cmp.Or(os.Getenv("POD_NAMESPACE"), "default")
		}
	}
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		return err
	}
	// A concurrent edit of the ConfigMap (kubectl, helm) makes the update conflict; read it
	// again and redo the one change, rather than overwrite the other edit.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, *configMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		data, ok := cm.Data[*key]
		if !ok {
			return fmt.Errorf("configmap %s/%s has no key %s", ns, *configMap, *key)
		}
		out, err := edit([]byte(data))
		if err != nil || *dryRun {
			return err
		}
		cm.Data[*key] = string(out)
		_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil || *dryRun {
		return err
	}
	fmt.Fprintf(stdout, "plugin %s %sd in configmap %s/%s; the producers apply it when the kubelet updates the mounted file (up to a minute)\n",
		name, verb, ns, *configMap)
	return nil
}

// writeFileAtomic replaces path with b through a rename, so a producer watching the file
// never reads half of it.
func writeFileAtomic(path string, b []byte) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".khook-tmp"
	if err := os.WriteFile(tmp, b, info.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
