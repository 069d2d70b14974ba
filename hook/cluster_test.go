package hook

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
)

// A single-cluster install's keys are what they were before clusters existed: claims,
// contexts and records already in the bucket keep working across the upgrade.
func TestSingleClusterKeysDoNotChange(t *testing.T) {
	ev := &mapping.Event{ID: "kubernetes/uid-1", Type: "pod-restart", Namespace: "shop", Resource: mapping.Resource{Kind: "Pod", Name: "cart-1"}}
	key := KeyOf(ev)
	require.Equal(t, Hash("entry", "pod-restart", "shop", "Pod", "cart-1"), SuppressionKey("entry", key))
	require.Equal(t, Hash("pod-restart", "shop", "Pod", "cart-1"), key.Hash())
	m := mustIndex(t, hookYAML).Match(&mapping.Event{Type: "pod-restart", Namespace: "prod"})[0]
	ev.Namespace = "prod"
	task := Identify(m, ev)
	require.Equal(t, UUID("context", m.Entry(), "pod-restart", "prod", "Pod", "cart-1"), task.ContextID)
}

// The same pod in two clusters is two resources: two suppression windows, two agent
// contexts, two delivery ids; and a cluster's key is not any single-cluster key.
func TestTheClusterIsPartOfAnEventsIdentity(t *testing.T) {
	m := mustIndex(t, hookYAML).Match(&mapping.Event{Type: "pod-restart", Namespace: "prod"})[0]
	task := func(cluster string) Task {
		ev := &mapping.Event{ID: "kubernetes/uid-1", Cluster: cluster, Type: "pod-restart", Namespace: "prod",
			Resource: mapping.Resource{Kind: "Pod", Name: "cart-1"}}
		return Identify(m, ev)
	}
	none, a, b := task(""), task("eu-1"), task("us-1")
	for _, pair := range [][2]Task{{none, a}, {none, b}, {a, b}} {
		require.NotEqual(t, pair[0].SuppressionKey, pair[1].SuppressionKey)
		require.NotEqual(t, pair[0].ContextID, pair[1].ContextID)
	}
	require.Equal(t, a, task("eu-1"), "every replica derives the same identity")
}

func TestHookClustersLimitWhichEventsItFiresOn(t *testing.T) {
	idx := mustIndex(t, strings.Replace(hookYAML, "spec:\n", "spec:\n  clusters: [eu-1, us-1]\n", 1))
	for cluster, want := range map[string]int{"eu-1": 1, "us-1": 1, "ap-1": 0, "": 0} {
		got := idx.Match(&mapping.Event{Cluster: cluster, Type: "pod-restart", Namespace: "prod"})
		require.Len(t, got, want, "cluster %q", cluster)
	}
	// Without clusters, every cluster's events and those without one.
	all := mustIndex(t, hookYAML)
	for _, cluster := range []string{"eu-1", ""} {
		require.Len(t, all.Match(&mapping.Event{Cluster: cluster, Type: "pod-restart", Namespace: "prod"}), 1)
	}
	_, err := Parse([]byte(strings.Replace(hookYAML, "spec:\n", "spec:\n  clusters: [EU_1, \"\"]\n", 1)))
	require.ErrorContains(t, err, "spec.clusters[0]")
	require.ErrorContains(t, err, "spec.clusters[1]")
}

// Grouping by something that lives inside a cluster (a namespace, a workload) groups by
// cluster too; grouping by reason alone gathers the same failure from every cluster into
// one task that names them.
func TestGroupLabelsAndTheClusters(t *testing.T) {
	ev := func(cluster, name string) *mapping.Event {
		return &mapping.Event{Cluster: cluster, Type: "pod-restart", Namespace: "prod", Reason: "BackOff",
			Resource: mapping.Resource{Kind: "Pod", Name: name}}
	}
	byNamespace := Grouping{By: []string{"namespace"}}
	require.Equal(t, map[string]string{"namespace": "prod", "cluster": "eu-1"}, byNamespace.Labels(ev("eu-1", "a")))
	require.Equal(t, map[string]string{"namespace": "prod"}, byNamespace.Labels(ev("", "a")))
	require.NotEqual(t, GroupKey("e", byNamespace.Labels(ev("eu-1", "a"))), GroupKey("e", byNamespace.Labels(ev("us-1", "a"))))

	byReason := Grouping{By: []string{"reason"}}
	labels := byReason.Labels(ev("eu-1", "a"))
	require.Equal(t, map[string]string{"reason": "BackOff"}, labels)
	require.Equal(t, GroupKey("e", labels), GroupKey("e", byReason.Labels(ev("us-1", "a"))))

	require.Equal(t, map[string]string{"cluster": "us-1"}, Grouping{By: []string{"cluster"}}.Labels(ev("us-1", "a")))

	var events []GroupEvent
	for _, c := range []string{"us-1", "eu-1", "ap-1", "eu-1"} {
		events = append(events, GroupEvent{Event: *ev(c, "web-"+c), Count: 1})
	}
	text := GroupContext(Group{Labels: labels, Count: 4, Resources: 4}, events)
	require.Contains(t, text, "\nClusters: ap-1, eu-1, us-1\n")
	require.Contains(t, text, "\n- [eu-1] prod Pod/web-eu-1: BackOff")
}

func TestPromptsSeeTheCluster(t *testing.T) {
	ev := &mapping.Event{Cluster: "eu-1", Type: "pod-restart", Namespace: "prod", Resource: mapping.Resource{Name: "a"}}
	require.Equal(t, "in eu-1", ExpandPrompt("in {{ .Cluster }}", ev))
	require.Equal(t, "in eu-1", expandPlaceholders("in {{.Cluster}}", ev))
	require.True(t, strings.HasPrefix(EventContext(ev), "\nCluster: eu-1\nNamespace: prod"))
	ev.Cluster = ""
	require.NotContains(t, EventContext(ev), "Cluster")
}
