package hook

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
)

// A group across clusters (groupBy [reason]) whose prompt has to list fewer events to fit
// the prompt limit still names every cluster of the group, not only those it lists.
func TestGroupClustersLineNamesEveryClusterWhenShortened(t *testing.T) {
	idx := mustIndex(t, groupedHook("  groupBy: [reason]\n"))
	ev := &mapping.Event{Type: "pod-restart", Namespace: "prod", Reason: "BackOff", Resource: mapping.Resource{Kind: "Pod", Name: "web-0"}}
	m := idx.Match(ev)[0]
	m.prompt = mustTemplate(t, "{{range .Events}}{{.Message}}{{end}}")
	var events []GroupEvent
	for i, c := range []string{"eu-1", "eu-1", "us-1", "us-1"} {
		e := *ev
		e.Cluster = c
		e.Resource.Name = fmt.Sprintf("web-%d", i)
		e.Message = strings.Repeat("m", 20<<10)
		events = append(events, GroupEvent{Event: e, Count: 1})
	}
	g := Group{Key: "k", Labels: map[string]string{"reason": "BackOff"}, Count: 4, Total: 4, Resources: 4}
	task, err := GroupTask(m, g, events)
	require.NoError(t, err)
	require.True(t, strings.Contains(task.Text, "\nClusters: eu-1, us-1\n"), "the group's clusters, not only the listed events'")
}
