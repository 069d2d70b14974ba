package state

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/streamstest"
)

func restart(pod string, seq uint64) Arrival {
	return Arrival{Event: &mapping.Event{ID: fmt.Sprint("ev-", seq), Type: "pod-restart", Namespace: "shop",
		Resource: mapping.Resource{Kind: "Pod", Name: pod}, Severity: "warning"}, RawSeq: seq, ID: fmt.Sprint("ev-", seq)}
}

func groupInit() GroupRecord {
	return GroupRecord{Entry: "shop/h#e", Hook: "shop/h", Agent: "kagent/sre", Wait: time.Minute, Interval: time.Hour, MaxEvents: 100}
}

// A storm of 20,000 events (the bench's) into one group counts each raw event once: the
// first of them, redelivered after every other was counted, is not counted again, nor is a
// replayed copy (which carries its original's sequence). Two groups whose events arrive
// interleaved in small bursts, as sixteen workers take them, do the same.
func TestGroupCountsEachRawEventOnceInAStorm(t *testing.T) {
	s, _, _ := openStore(t, time.Hour)
	ctx := context.Background()
	const storm = 20000
	// Bursts of eight of each group, each burst one write, as the combiner writes them.
	for first := uint64(1); first <= storm; first += 8 {
		group := "a"
		if first/8%2 == 1 {
			group = "b"
		}
		var burst []Arrival
		for seq := first; seq < first+8; seq++ {
			burst = append(burst, restart(fmt.Sprintf("%s-%d", group, seq%50), seq))
		}
		_, err := s.AddToGroup(ctx, group, groupInit(), burst...)
		require.NoError(t, err)
	}
	// The first events come back: a lost acknowledgement's redelivery, and a replayed copy
	// with a new id.
	again := restart("a-1", 1)
	replayed := restart("a-2", 2)
	replayed.Event.ID, replayed.ID = "replay-of-ev-2", "ev-2"
	_, err := s.AddToGroup(ctx, "a", groupInit(), again, replayed)
	require.NoError(t, err)
	_, err = s.AddToGroup(ctx, "b", groupInit(), restart("b-9", 9))
	require.NoError(t, err)
	groups, err := s.Groups(ctx)
	require.NoError(t, err)
	require.Equal(t, storm/2, groups["a"].Total, "every event of a counted once")
	require.Equal(t, storm/2, groups["b"].Total, "every event of b counted once")
	require.Zero(t, groups["a"].Forgotten)
	b, err := json.Marshal(groups["a"])
	require.NoError(t, err)
	t.Logf("group record after %d events: %d bytes, %d runs", storm/2, len(b), len(groups["a"].Counted))
}

// Waiting work is not kept by the bucket's TTL: a group outlives it, and so does a budget,
// while the records the TTL is for expire.
func TestWaitingWorkOutlivesTheBucketTTL(t *testing.T) {
	s, ns, topo := openStore(t, time.Second)
	ctx := context.Background()
	_, err := s.AddToGroup(ctx, "g", groupInit(), restart("web-0", 1))
	require.NoError(t, err)
	took, err := s.TakeBudget(ctx, Budget{Agent: "kagent/sre", MaxTasksPerHour: 5}, "kagent/sre", "t", "r", time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.True(t, took)
	_, err = s.AddToGroup(ctx, "g", groupInit(), restart("web-1", 2))
	require.NoError(t, err)
	// The canary, a Hook's active event, lives by the bucket's TTL alone, and is written
	// last: once it has expired, anything the TTL applied to that was written before it
	// has expired too.
	now := time.Now()
	require.NoError(t, s.Seen(ctx, ActiveEvent{Hook: "shop/canary", EventType: "x", FirstSeen: now, LastSeen: now, Window: time.Minute}))
	require.Eventually(t, func() bool {
		active, err := s.ActiveEvents(ctx, "shop/canary")
		return err == nil && len(active) == 0
	}, 30*time.Second, 50*time.Millisecond, "the active event expires with the bucket's TTL")
	kv := rawKV(t, ns, topo)
	_, err = kv.Get(ctx, groups.key("g"))
	require.NoError(t, err, "the group is still there")
	records, err := s.Budgets(ctx)
	require.NoError(t, err)
	require.Len(t, records, 1, "the budget is still there")
	g, err := s.Groups(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, g["g"].Pending)
}

// A group deleted once it was over and opened again by the same incident is a new
// incarnation: its tasks have new message ids, so they are never taken for the earlier
// one's. Opening it again writes over the delete marker.
func TestRecurringGroupIsANewIncarnation(t *testing.T) {
	s, ns, topo := openStore(t, time.Hour)
	ctx := context.Background()
	added, err := s.AddToGroup(ctx, "g", groupInit(), restart("web-0", 1))
	require.NoError(t, err)
	require.True(t, added.Opened)
	first, err := s.Groups(ctx)
	require.NoError(t, err)
	rec := first["g"]
	require.Equal(t, rec.MessageID("g"), added.Task, "the event goes in the group's first task")
	_, err = s.LeaseGroup(ctx, "g", "r", time.Now().Add(time.Minute), rec.Due.Add(time.Second))
	require.NoError(t, err)
	require.NoError(t, s.FinishGroup(ctx, "g", "r"))
	e, err := rawKV(t, ns, topo).Get(ctx, groups.key("g"))
	require.NoError(t, err)
	require.NoError(t, s.DeleteGroup(ctx, "g", e.Revision()))

	added, err = s.AddToGroup(ctx, "g", groupInit(), restart("web-0", 100))
	require.NoError(t, err)
	require.True(t, added.Opened, "the same key, opened again")
	second, err := s.Groups(ctx)
	require.NoError(t, err)
	again := second["g"]
	require.Equal(t, again.MessageID("g"), added.Task)
	require.NotEqual(t, rec.MessageID("g"), added.Task, "a recurrence's events go in a task of their own")
	require.NotEqual(t, rec.Incarnation, again.Incarnation)
	require.NotEqual(t, rec.MessageID("g"), again.MessageID("g"))
	require.Equal(t, 0, again.Sent)
	require.Equal(t, 1, again.Total)
}

// A record that cannot fit in one message is ErrTooLarge, on the first try: a queued task
// whose event's payload makes its record too large cannot be stored, and must be
// dead-lettered rather than retried for ever.
func TestRecordTooLargeIsSaidAtOnce(t *testing.T) {
	s, _, _ := openStore(t, time.Hour)
	ctx := context.Background()
	a := restart("web-0", 1)
	a.Event.Data = json.RawMessage(`"` + strings.Repeat("x", 1<<20) + `"`)
	init := groupInit()
	init.Single, init.Task, init.MaxEvents = true, "task-1", 1
	_, err := s.AddToGroup(ctx, "single", init, a)
	require.ErrorIs(t, err, ErrTooLarge)
}

// A storm of large events fills a group's record before maxEventsPerTask (here 1000): the
// events past what fits are counted, not listed, as past maxEventsPerTask, and the group
// can still take its lease and be sent. (A thousand events with kilobyte messages do it; a
// large tag on each does it sooner.)
func TestFullGroupCountsWithoutListing(t *testing.T) {
	s, _, _ := openStore(t, time.Hour)
	ctx := context.Background()
	init := groupInit()
	init.MaxEvents = 1000
	const events = 20
	for i := range events {
		a := restart(fmt.Sprintf("pod-%04d", i), uint64(i+1))
		a.Event.Tags = map[string]string{"detail": strings.Repeat("t", 100000)}
		_, err := s.AddToGroup(ctx, "g", init, a)
		require.NoError(t, err, "event %d", i)
	}
	groups, err := s.Groups(ctx)
	require.NoError(t, err)
	g := groups["g"]
	require.Equal(t, events, g.Total)
	require.Positive(t, g.Omitted, "some are counted, not listed")
	require.Equal(t, events, len(g.Events)+g.Omitted)
	leased, err := s.LeaseGroup(ctx, "g", "r", time.Now().Add(time.Minute), g.Due.Add(time.Second))
	require.NoError(t, err, "the full group takes its lease")
	require.Equal(t, events, leased.Lease.Pending)
}

// A lease that lapsed (its replica died after sending) is taken over with the coverage it
// had: when the task turns out to be settled already, the events that arrived since stay
// pending for the next task instead of being taken as sent.
func TestLapsedLeaseKeepsItsCoverage(t *testing.T) {
	s, _, _ := openStore(t, time.Hour)
	ctx := context.Background()
	_, err := s.AddToGroup(ctx, "g", groupInit(), restart("web-0", 1), restart("web-1", 2))
	require.NoError(t, err)
	groups, err := s.Groups(ctx)
	require.NoError(t, err)
	due := groups["g"].Due
	leased, err := s.LeaseGroup(ctx, "g", "crashed", due.Add(time.Second), due.Add(time.Millisecond))
	require.NoError(t, err)
	added, err := s.AddToGroup(ctx, "g", groupInit(), restart("web-2", 3), restart("web-3", 4), restart("web-1", 2))
	require.NoError(t, err)
	// What arrives while a task is being sent goes in the next one; a repeat adds nothing.
	require.Equal(t, hook.GroupMessageID("g", leased.Incarnation, 1), added.Task)
	require.Equal(t, leased.MessageID("g"), added.Sending, "the task being sent, which a retry would make cover them")
	require.Equal(t, []bool{false, false, true}, added.Repeat)
	// The lease lapsed: another replica takes the task over.
	taken, err := s.LeaseGroup(ctx, "g", "survivor", due.Add(time.Hour), due.Add(2*time.Second))
	require.NoError(t, err)
	require.Equal(t, 2, taken.Lease.Pending, "the old task's coverage")
	require.NoError(t, s.FinishGroup(ctx, "g", "survivor"))
	groups, err = s.Groups(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, groups["g"].Pending, "web-2 and web-3 wait for the next task")
	require.Equal(t, 1, groups["g"].Sent)
}

// A group deleted long enough ago that the server aged its delete marker out (leaving a
// marker of its own, with a reason instead of an operation) is opened again at once.
func TestGroupReopensAfterItsMarkerAgedOut(t *testing.T) {
	s, ns, topo := openStore(t, time.Second)
	ctx := context.Background()
	_, err := s.AddToGroup(ctx, "g", groupInit(), restart("web-0", 1))
	require.NoError(t, err)
	kv := rawKV(t, ns, topo)
	e, err := kv.Get(ctx, groups.key("g"))
	require.NoError(t, err)
	require.NoError(t, s.DeleteGroup(ctx, "g", e.Revision()))
	_, js := streamstest.Connect(t, ns)
	st, err := js.Stream(ctx, "KV_"+topo.DispatchBucket)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		m, err := st.GetLastMsgForSubject(ctx, "$KV."+topo.DispatchBucket+"."+groups.key("g"))
		return err == nil && m.Header.Get("Nats-Marker-Reason") != ""
	}, 30*time.Second, 50*time.Millisecond, "the server replaced the delete marker with its own")
	added, err := s.AddToGroup(ctx, "g", groupInit(), restart("web-0", 2))
	require.NoError(t, err)
	require.True(t, added.Opened)
}
