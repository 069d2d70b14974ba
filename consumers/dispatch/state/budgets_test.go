package state

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/streamstest"
)

// Eight replicas race for a budget's last slot, twenty times: each time exactly one is told
// it has it, and the record holds exactly the slots the budget allows. A replica that loses
// the compare-and-set decides again on the winner's record.
func TestBudgetHoldsWhenReplicasRace(t *testing.T) {
	s, ns, topo := openStore(t, time.Hour)
	replicas := []*Store{s}
	for range 7 {
		replicas = append(replicas, replica(t, ns, topo))
	}
	ctx := context.Background()
	b := Budget{Agent: "kagent/sre", MaxConcurrentTasks: 2}
	until := time.Now().Add(time.Hour)
	took, err := s.TakeBudget(ctx, b, b.Agent, "first", "r0", until)
	require.NoError(t, err)
	require.True(t, took)
	for round := range 20 {
		var winners atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, r := range replicas {
			wg.Go(func() {
				<-start
				took, err := r.TakeBudget(ctx, b, b.Agent, fmt.Sprint("task-", round, "-", i), fmt.Sprint("r", i), until)
				require.NoError(t, err)
				if took {
					winners.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		require.Equal(t, int32(1), winners.Load(), "round %d: one replica has the last slot", round)
		records, err := s.Budgets(ctx)
		require.NoError(t, err)
		inFlight, _ := records[0].InUse(time.Now())
		require.Equal(t, 2, inFlight, "round %d", round)
		// The winner's task ends; the next round races for its slot.
		for hold := range records[0].Holds {
			if hold != "first r0" {
				var msg, holder string
				_, _ = fmt.Sscan(hold, &msg, &holder)
				require.NoError(t, s.ReturnBudget(ctx, b.Agent, msg, holder, false))
			}
		}
	}
}

// The hourly limit holds under the same race: of 8 replicas racing 20 times for a budget of
// 20 an hour, exactly 20 take a slot, and the record keeps 20 start times, not more.
func TestHourlyBudgetHoldsWhenReplicasRace(t *testing.T) {
	s, ns, topo := openStore(t, time.Hour)
	replicas := []*Store{s}
	for range 7 {
		replicas = append(replicas, replica(t, ns, topo))
	}
	ctx := context.Background()
	b := Budget{Agent: "kagent/sre", MaxTasksPerHour: 20}
	var took atomic.Int32
	for round := range 20 {
		var wg sync.WaitGroup
		for i, r := range replicas {
			wg.Go(func() {
				id := fmt.Sprint("task-", round, "-", i)
				ok, err := r.TakeBudget(ctx, b, b.Agent, id, fmt.Sprint("r", i), time.Now().Add(time.Minute))
				require.NoError(t, err)
				if ok {
					took.Add(1)
					require.NoError(t, r.ReturnBudget(ctx, b.Agent, id, fmt.Sprint("r", i), false))
				}
			})
		}
		wg.Wait()
	}
	require.Equal(t, int32(20), took.Load())
	records, err := s.Budgets(ctx)
	require.NoError(t, err)
	require.Len(t, records[0].Sent, 20)
}

// A write that fails takes nothing: a budget record the server refuses to store (here, one
// past the bucket's largest value) is not a slot taken.
func TestBudgetWriteErrorTakesNothing(t *testing.T) {
	ns := streamstest.RunServer(t)
	_, js := streamstest.Connect(t, ns)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "tiny", MaxValueSize: 64, LimitMarkerTTL: time.Second})
	require.NoError(t, err)
	s := New(js, kv, time.Hour)
	took, err := s.TakeBudget(ctx, Budget{Agent: "kagent/sre", MaxConcurrentTasks: 1}, "kagent/sre", "task-1", "r0", time.Now().Add(time.Minute))
	require.Error(t, err)
	require.False(t, took, "a failed write is not a slot taken")
}

// A budget keeps only what its limits need: with only a concurrency limit no start times at
// all, and with an hourly limit never more than the limit; so its record does not grow with
// the rate of tasks. A refund gives back the task's own start, not another's.
func TestBudgetRecordIsBounded(t *testing.T) {
	s, _, _ := openStore(t, time.Hour)
	ctx := context.Background()
	concurrent := Budget{Agent: "kagent/a", MaxConcurrentTasks: 1}
	for i := range 300 {
		id := fmt.Sprint("task-", i)
		took, err := s.TakeBudget(ctx, concurrent, concurrent.Agent, id, "r0", time.Now().Add(time.Minute))
		require.NoError(t, err)
		require.True(t, took)
		require.NoError(t, s.ReturnBudget(ctx, concurrent.Agent, id, "r0", false))
	}
	records, err := s.Budgets(ctx)
	require.NoError(t, err)
	require.Empty(t, records[0].Sent, "no start times without an hourly limit")
	require.Empty(t, records[0].Holds)

	hourly := Budget{Agent: "kagent/b", MaxTasksPerHour: 2}
	clock := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	take := func(id string) bool {
		took, err := s.TakeBudget(ctx, hourly, hourly.Agent, id, "r0", clock.Add(30*time.Minute))
		require.NoError(t, err)
		return took
	}
	require.True(t, take("a"))
	clock = clock.Add(10 * time.Minute)
	require.True(t, take("b"))
	require.False(t, take("c"), "two an hour")
	// a's call failed: its own start goes, and b's stays counted until b's hour is over.
	require.NoError(t, s.ReturnBudget(ctx, hourly.Agent, "a", "r0", true))
	require.True(t, take("c"))
	clock = clock.Add(55 * time.Minute) // an hour after a, 55 minutes after b
	require.False(t, take("d"), "b's and c's starts are within the hour")
}

// A replica that takes a task it holds already renews the hold; one whose hold lapsed
// decides afresh, so a lapsed hold never lets a task past a budget that is full.
func TestBudgetHoldIsRenewedOrDecidedAfresh(t *testing.T) {
	s, _, _ := openStore(t, time.Hour)
	ctx := context.Background()
	b := Budget{Agent: "kagent/a", MaxConcurrentTasks: 1}
	clock := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	take := func(id, holder string) bool {
		took, err := s.TakeBudget(ctx, b, b.Agent, id, holder, clock.Add(time.Minute))
		require.NoError(t, err)
		return took
	}
	require.True(t, take("task-1", "r0"))
	clock = clock.Add(30 * time.Second)
	require.True(t, take("task-1", "r0"), "held already: renewed")
	clock = clock.Add(45 * time.Second) // past the first until, within the renewed one
	require.False(t, take("task-2", "r1"), "the renewed hold still holds the slot")
	clock = clock.Add(2 * time.Minute) // every hold lapsed
	require.True(t, take("task-2", "r1"))
	require.False(t, take("task-1", "r0"), "task-1's lapsed hold is gone; the slot is task-2's")
}
