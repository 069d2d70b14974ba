package state

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// The set agrees with a plain map whatever the order of arrival, and a storm of one group,
// arriving nearly in order, is a few runs.
func TestSeqSetAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s SeqSet
	seen := map[uint64]bool{}
	for range 3000 {
		seq := uint64(rng.IntN(30000)) + 1
		added, forgotten := s.Add(seq)
		require.Zero(t, forgotten)
		require.Equal(t, !seen[seq], added, "seq %d", seq)
		seen[seq] = true
	}
	for seq := uint64(0); seq < 30002; seq++ {
		require.Equal(t, seen[seq], s.Contains(seq), "seq %d", seq)
	}
	require.Equal(t, uint64(len(seen)), s.Len())

	var storm SeqSet
	for i := range uint64(20000) {
		// Sixteen workers take events out of order within a window.
		storm.Add(i ^ 7)
	}
	require.Len(t, storm, 1)
	require.Equal(t, uint64(20000), storm.Len())
}

// Past maxRuns the oldest runs are forgotten and counted; the newest stay.
func TestSeqSetIsBounded(t *testing.T) {
	var s SeqSet
	var forgotten uint64
	for i := range uint64(maxRuns + 10) {
		_, f := s.Add(2*i + 1) // every other sequence: one run each
		forgotten += f
	}
	require.Len(t, s, maxRuns)
	require.Equal(t, uint64(10), forgotten)
	require.False(t, s.Contains(1))
	require.True(t, s.Contains(2*(maxRuns+9)+1))
}
