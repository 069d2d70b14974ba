package state

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
)

// A cross-cluster group (groupBy [reason]) with maxEventsPerTask: 2 keeps the cluster of
// the event past the limit, which it counts but does not keep, so its task names it.
func TestOmittedEventsKeepTheirCluster(t *testing.T) {
	r := &GroupRecord{Labels: map[string]string{"reason": "BackOff"}, MaxEvents: 2}
	index := map[string]int{}
	now := time.Now()
	for i, c := range []string{"eu-1", "eu-1", "us-1"} {
		ev := &mapping.Event{ID: fmt.Sprint("k/", i), Cluster: c, Type: "pod-restart", Namespace: "prod", Reason: "BackOff",
			Resource: mapping.Resource{Kind: "Pod", Name: fmt.Sprint("web-", i)}}
		require.True(t, r.add(Arrival{Event: ev, RawSeq: uint64(i + 1)}, now, index, false))
	}
	text := hook.GroupContext(r.Group("k"), r.Events)

	require.True(t, strings.Contains(text, "us-1"), "us-1's event is in the group, but the text never names us-1")
}
