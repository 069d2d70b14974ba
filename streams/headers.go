package streams

// Headers that mark a replayed event. The replay sets them on the copy it sends, the
// mapper carries them from the raw event to the normalized one, and the dispatcher reads
// them, so a replayed event can be told apart from its original at every stage.
const (
	HeaderReplayID          = "Khook-Replay-Id"
	HeaderOriginalID        = "Khook-Original-Id"
	HeaderOriginalSeq       = "Khook-Original-Seq"
	HeaderIgnoreSuppression = "Khook-Ignore-Suppression"
)

// ReplayHeaders are the headers a stage passes on from its input to its output.
var ReplayHeaders = []string{HeaderReplayID, HeaderOriginalID, HeaderOriginalSeq, HeaderIgnoreSuppression}

// HeaderRawSeq is set by the mapper on every normalized event: the sequence, in the raw
// stream, of the raw event it was mapped from (for a replayed copy, its original's). A
// redelivered event, and a replayed copy of an event, carry the same value as the first
// delivery, so the dispatcher's groups count each raw event once. Replays and the mapper
// pass it on unchanged.
const HeaderRawSeq = "Khook-Raw-Seq"

// HeaderRetryOf marks an event republished from a dead letter (khook dlq retry) with the
// dead letter's sequence: it is handled again on purpose, not as a repeat of its original.
const HeaderRetryOf = "Khook-Dlq-Retry-Of"

// HeaderMapping is set by the mapper on every normalized event: "mapped" when a mapping rule
// made it, "passthrough" when no rule matched and unmapped events pass through with their
// own type. khook events describe shows it.
const HeaderMapping = "Khook-Mapping"
