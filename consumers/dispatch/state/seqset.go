package state

import "slices"

// SeqSet is a set of raw-stream sequences, kept as sorted, disjoint runs: the events of one
// incident arrive close together in the raw stream, so a storm of 20,000 events of one group
// is a few runs, not 20,000 ids. It is how a group counts each event once, whether it comes
// again as a redelivery after a lost acknowledgement or as a replayed copy.
type SeqSet []SeqRun

// SeqRun is the sequences First to Last, both included.
type SeqRun [2]uint64

// maxRuns bounds a SeqSet, so that a group's record stays far below the server's
// max_payload: the record is rewritten on every event. Past it, the oldest runs are
// forgotten (and counted).
const maxRuns = 4096

// Add adds seq, reporting whether it was new. It returns how many sequences it forgot to
// stay within maxRuns.
func (s *SeqSet) Add(seq uint64) (added bool, forgotten uint64) {
	runs := *s
	// The first run that ends at or after seq.
	i, _ := slices.BinarySearchFunc(runs, seq, func(r SeqRun, seq uint64) int {
		switch {
		case r[1] < seq:
			return -1
		case r[1] > seq:
			return 1
		}
		return 0
	})
	if i < len(runs) && runs[i][0] <= seq {
		return false, 0
	}
	switch {
	case i > 0 && runs[i-1][1]+1 == seq && i < len(runs) && runs[i][0] == seq+1:
		// It joins two runs.
		runs[i-1][1] = runs[i][1]
		runs = slices.Delete(runs, i, i+1)
	case i > 0 && runs[i-1][1]+1 == seq:
		runs[i-1][1] = seq
	case i < len(runs) && runs[i][0] == seq+1:
		runs[i][0] = seq
	default:
		runs = slices.Insert(runs, i, SeqRun{seq, seq})
	}
	for len(runs) > maxRuns {
		forgotten += runs[0][1] - runs[0][0] + 1
		runs = runs[1:]
	}
	*s = runs
	return true, forgotten
}

// Contains reports whether seq is in the set.
func (s SeqSet) Contains(seq uint64) bool {
	i, _ := slices.BinarySearchFunc(s, seq, func(r SeqRun, seq uint64) int {
		if r[1] < seq {
			return -1
		}
		return 1
	})
	return i < len(s) && s[i][0] <= seq
}

// Len returns how many sequences the set holds.
func (s SeqSet) Len() uint64 {
	var n uint64
	for _, r := range s {
		n += r[1] - r[0] + 1
	}
	return n
}
